// A small interpreter for the subset of Jinja2 that Hugging Face chat templates use. Internal to
// model/chat_template.cc; the public face is cairn::ChatTemplate.
//
// Supported (anything else is rejected at parse time with "line L, column C: ..." naming it):
//   - text, {{ expr }}, {% stmt %}, {# comment #}; whitespace control `{%-`, `-%}`, `{{-`, `-}}`,
//     `{#-`, `-#}`, and `{%+`; trim_blocks, lstrip_blocks and keep_trailing_newline as options
//     (Hugging Face renders with trim_blocks and lstrip_blocks on, keep_trailing_newline off);
//   - statements: if / elif / else / endif, for NAME in EXPR / endfor (with loop.index, index0,
//     revindex, revindex0, first, last, length, previtem, nextitem), set NAME = EXPR and
//     set NS.ATTR = EXPR on a namespace();
//   - expressions: string, integer, true/false/none literals (either case), lists [..], dicts {..},
//     names, a.b, a['b'], a[i], a[i:j:k], calls, `x if c else y`, or / and / not, == != < > <= >=,
//     in / not in, is [not] TEST, + - * // % and unary -, ~ (string concatenation), |FILTER(args);
//   - filters: trim, length, count, upper, lower, capitalize, default (d), first, last, join,
//     string, int, replace, list, reverse, items, tojson, safe;
//   - tests: defined, undefined, none, string, number, integer, boolean, mapping, sequence,
//     iterable, odd, even, true, false, divisibleby, lower, upper;
//   - string methods strip, lstrip, rstrip, upper, lower, startswith, endswith, split, replace;
//     dict methods get, items, keys, values;
//   - functions raise_exception(message), namespace(key=value, ...), range(...).
// Values are Python-like: printing none gives "None", an undefined value prints as "", and reading
// an attribute of an undefined value is an error. upper/lower change ASCII letters only; length
// counts code points. Floats are not supported.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/status.h"

namespace cairn::detail::jinja {

struct Value;
using List = std::vector<Value>;
// Insertion-ordered, as Python dicts are.
using Dict = std::vector<std::pair<std::string, Value>>;

struct Value {
  enum class Kind : uint8_t { undefined, none, boolean, integer, string, list, dict };

  static Value none();
  static Value from(bool b);
  static Value from(int64_t i);
  static Value from(std::string s);
  static Value from(const char* s) { return from(std::string(s)); }
  static Value from(List list);
  static Value from(Dict dict);

  // The entry `key` of a dict, or nullptr.
  const Value* find(const std::string& key) const;

  Kind kind = Kind::undefined;
  bool boolean = false;
  int64_t integer = 0;
  std::string string;              // a string; for an undefined value, the name it was looked up by
  std::shared_ptr<List> list;      // kind list
  std::shared_ptr<Dict> dict;      // kind dict; shared so `set ns.attr` mutates a namespace()
  bool is_namespace = false;
};

struct Options {
  bool trim_blocks = true;            // drop the first newline after a block tag or comment
  bool lstrip_blocks = true;          // drop spaces and tabs between a line start and a block tag
  bool keep_trailing_newline = false; // keep a single newline at the very end of the source
};

// A parsed template. Immutable; copies share the parse tree; render() is safe to call from several
// threads at once.
class Template {
 public:
  // invalid_argument "line L, column C: <problem>" for a syntax error or an unsupported construct.
  static Result<Template> parse(const std::string& source, const Options& options = {});

  // Renders with `globals` as the top-level variables. invalid_argument "line L, column C:
  // <problem>" for a type error, an undefined value used as an object, or raise_exception(message)
  // (then the problem is "raised: <message>").
  Result<std::string> render(const Dict& globals) const;

  struct Impl;

 private:
  explicit Template(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace cairn::detail::jinja

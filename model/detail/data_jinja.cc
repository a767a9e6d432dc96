// The Jinja subset of data_jinja.h: a lexer that applies whitespace control while it splits the
// source into text, output and statement chunks; a recursive-descent parser with Jinja2's operator
// precedence; and a tree-walking renderer. Errors inside travel as a private exception that carries
// the source offset and become Status at the two entry points.
#include "model/detail/data_jinja.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>

namespace cairn::detail::jinja {

Value Value::none() {
  Value v;
  v.kind = Kind::none;
  return v;
}
Value Value::from(bool b) {
  Value v;
  v.kind = Kind::boolean;
  v.boolean = b;
  return v;
}
Value Value::from(int64_t i) {
  Value v;
  v.kind = Kind::integer;
  v.integer = i;
  return v;
}
Value Value::from(std::string s) {
  Value v;
  v.kind = Kind::string;
  v.string = std::move(s);
  return v;
}
Value Value::from(List list) {
  Value v;
  v.kind = Kind::list;
  v.list = std::make_shared<List>(std::move(list));
  return v;
}
Value Value::from(Dict dict) {
  Value v;
  v.kind = Kind::dict;
  v.dict = std::make_shared<Dict>(std::move(dict));
  return v;
}
const Value* Value::find(const std::string& key) const {
  if (kind != Kind::dict) return nullptr;
  for (const auto& [k, v] : *dict) {
    if (k == key) return &v;
  }
  return nullptr;
}

namespace {

// Thrown inside the lexer, parser and renderer; caught at parse() and render().
struct JinjaError {
  size_t pos;
  std::string message;
};

[[noreturn]] void fail(size_t pos, std::string message) { throw JinjaError{pos, std::move(message)}; }

std::string where(const std::string& source, size_t pos) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < pos && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

// ---------------------------------------------------------------------------------------------
// Lexer

enum class Tok { name, string, integer, op, end };

struct Token {
  Tok kind = Tok::end;
  std::string text;  // name, decoded string, or operator
  int64_t integer = 0;
  size_t pos = 0;
};

struct Chunk {
  enum class Kind { text, output, statement } kind;
  std::string text;           // kind text
  std::vector<Token> tokens;  // output and statement, ending with a Tok::end
  size_t pos = 0;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  Lexer(const std::string& source, const Options& options) : src_(source), options_(options) {}

  std::vector<Chunk> run() {
    size_t end = src_.size();
    if (!options_.keep_trailing_newline && end > 0 && src_[end - 1] == '\n') {
      --end;
      if (end > 0 && src_[end - 1] == '\r') --end;
    }
    end_ = end;
    size_t pos = 0;
    bool strip_leading = false;  // the previous tag ended with '-'
    bool trim_newline = false;   // the previous tag was a block or comment (trim_blocks)
    while (pos < end_) {
      size_t open = find_open(pos);
      std::string text = src_.substr(pos, open - pos);
      if (strip_leading) {
        size_t i = 0;
        while (i < text.size() && is_space(text[i])) ++i;
        text.erase(0, i);
      } else if (trim_newline) {
        if (text.compare(0, 1, "\n") == 0) {
          text.erase(0, 1);
        } else if (text.compare(0, 2, "\r\n") == 0) {
          text.erase(0, 2);
        }
      }
      strip_leading = trim_newline = false;
      if (open >= end_) {
        emit_text(std::move(text), pos);
        break;
      }
      char kind = src_[open + 1];  // '{', '%' or '#'
      size_t inner = open + 2;
      bool minus = inner < end_ && src_[inner] == '-';
      bool plus = inner < end_ && src_[inner] == '+';
      if (minus || plus) ++inner;
      if (minus) {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (!plus && kind != '{' && options_.lstrip_blocks) {
        // Only when the tag starts its line (after spaces and tabs).
        size_t i = open;
        while (i > 0 && (src_[i - 1] == ' ' || src_[i - 1] == '\t')) --i;
        if (i == 0 || src_[i - 1] == '\n') {
          size_t strip = open - i;
          if (strip <= text.size()) text.erase(text.size() - strip);
        }
      }
      emit_text(std::move(text), pos);

      bool close_minus = false;
      if (kind == '#') {
        size_t close = src_.find("#}", inner);
        if (close == std::string::npos || close + 2 > end_) fail(open, "unclosed comment");
        close_minus = close > inner && src_[close - 1] == '-';
        pos = close + 2;
      } else {
        Chunk chunk;
        chunk.kind = kind == '{' ? Chunk::Kind::output : Chunk::Kind::statement;
        chunk.pos = open;
        pos = lex_tag(inner, kind == '{' ? '}' : '%', chunk.tokens, close_minus);
        chunks_.push_back(std::move(chunk));
      }
      strip_leading = close_minus;
      trim_newline = !close_minus && kind != '{' && options_.trim_blocks;
    }
    return std::move(chunks_);
  }

 private:
  size_t find_open(size_t pos) const {
    while (true) {
      size_t i = src_.find('{', pos);
      if (i == std::string::npos || i + 1 >= end_) return end_;
      char c = src_[i + 1];
      if (c == '{' || c == '%' || c == '#') return i;
      pos = i + 1;
    }
  }

  void emit_text(std::string text, size_t pos) {
    if (text.empty()) return;
    Chunk chunk;
    chunk.kind = Chunk::Kind::text;
    chunk.text = std::move(text);
    chunk.pos = pos;
    chunks_.push_back(std::move(chunk));
  }

  // Tokens up to the closing "}}" or "%}" (closer is '}' or '%'); returns the offset after it.
  size_t lex_tag(size_t pos, char closer, std::vector<Token>& tokens, bool& close_minus) {
    static const char* const kOps[] = {"//", "==", "!=", "<=", ">=", "**", "+", "-", "*", "/", "%", "~",
                                       "<",  ">",  "=",  "(",  ")",  "[",  "]", "{", "}", ".", ",", ":", "|"};
    while (true) {
      while (pos < end_ && is_space(src_[pos])) ++pos;
      if (pos >= end_) fail(pos, std::string("unclosed tag: expected '") + closer + "}'");
      if (src_[pos] == closer && pos + 1 < end_ && src_[pos + 1] == '}') {
        tokens.push_back(Token{Tok::end, "", 0, pos});
        close_minus = false;
        return pos + 2;
      }
      if (src_[pos] == '-' && pos + 2 < end_ && src_[pos + 1] == closer && src_[pos + 2] == '}') {
        tokens.push_back(Token{Tok::end, "", 0, pos});
        close_minus = true;
        return pos + 3;
      }
      char c = src_[pos];
      Token token;
      token.pos = pos;
      if (is_name_start(c)) {
        size_t start = pos;
        while (pos < end_ && is_name_char(src_[pos])) ++pos;
        token.kind = Tok::name;
        token.text = src_.substr(start, pos - start);
      } else if (c >= '0' && c <= '9') {
        size_t start = pos;
        while (pos < end_ && src_[pos] >= '0' && src_[pos] <= '9') ++pos;
        if (pos + 1 < end_ && src_[pos] == '.' && src_[pos + 1] >= '0' && src_[pos + 1] <= '9') {
          fail(start, "floating-point numbers are not supported");
        }
        token.kind = Tok::integer;
        token.integer = std::stoll(src_.substr(start, pos - start));
      } else if (c == '\'' || c == '"') {
        token.kind = Tok::string;
        pos = lex_string(pos, token.text);
      } else {
        const char* op = nullptr;
        for (const char* candidate : kOps) {
          if (src_.compare(pos, std::char_traits<char>::length(candidate), candidate) == 0) {
            op = candidate;
            break;
          }
        }
        if (op == nullptr) fail(pos, std::string("unexpected character '") + c + "'");
        token.kind = Tok::op;
        token.text = op;
        pos += token.text.size();
      }
      tokens.push_back(std::move(token));
    }
  }

  // Python string escapes \n \t \r \\ \' \" \uXXXX; any other backslash stays as written.
  size_t lex_string(size_t pos, std::string& out) {
    char quote = src_[pos];
    size_t start = pos++;
    while (true) {
      if (pos >= end_) fail(start, "unterminated string");
      char c = src_[pos];
      if (c == quote) return pos + 1;
      if (c == '\\' && pos + 1 < end_) {
        char e = src_[pos + 1];
        pos += 2;
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case '\\': out += '\\'; break;
          case '\'': out += '\''; break;
          case '"': out += '"'; break;
          case 'u': {
            if (pos + 4 > end_) fail(pos - 2, "bad \\u escape");
            uint32_t cp = static_cast<uint32_t>(std::stoul(src_.substr(pos, 4), nullptr, 16));
            append_utf8(out, cp);
            pos += 4;
            break;
          }
          default:
            out += '\\';
            out += e;
        }
        continue;
      }
      out += c;
      ++pos;
    }
  }

  const std::string& src_;
  const Options& options_;
  size_t end_ = 0;
  std::vector<Chunk> chunks_;
};

// ---------------------------------------------------------------------------------------------
// Syntax tree

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind { literal, name, attr, item, slice, call, filter, test, not_, neg, binary, cond, list, dict };
  Kind kind = Kind::literal;
  size_t pos = 0;
  Value literal;
  std::string name;  // name, attribute, filter, test, or binary operator
  bool negated = false;  // `is not`
  // attr/item/filter/test: args[0] is the object, then the arguments. call: args[0] is the callee.
  // slice: object, start, stop, step (null when absent). cond: then, condition, else (or null).
  // dict: key, value, key, value, ...
  std::vector<ExprPtr> args;
  std::vector<std::string> kwnames;  // call and filter: names of the last kwnames.size() args
};

struct Node;
struct Branch;

struct Node {
  enum class Kind { text, output, if_, for_, set };
  Kind kind = Kind::text;
  size_t pos = 0;
  std::string text;           // text
  ExprPtr expr;               // output, set value, for iterable
  std::vector<Branch> branches;  // if: conditions (null for else) and bodies
  std::vector<Node> body;     // for
  std::string var;            // for variable; set target
  std::string attr;           // set NS.ATTR
};

struct Branch {
  ExprPtr cond;
  std::vector<Node> body;
};

const std::set<std::string>& known_filters() {
  static const std::set<std::string> kFilters = {"trim",  "length", "count",  "upper", "lower",  "capitalize",
                                                 "default", "d",    "first",  "last",  "join",   "string",
                                                 "int",   "replace", "list", "reverse", "items", "tojson",
                                                 "safe"};
  return kFilters;
}

const std::set<std::string>& known_tests() {
  static const std::set<std::string> kTests = {"defined", "undefined", "none",     "string", "number",
                                               "integer", "boolean",   "mapping",  "sequence", "iterable",
                                               "odd",     "even",      "true",     "false",  "divisibleby",
                                               "lower",   "upper"};
  return kTests;
}

// ---------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  explicit Parser(std::vector<Chunk> chunks) : chunks_(std::move(chunks)) {}

  std::vector<Node> run() {
    std::string end_tag;
    return parse_block({}, end_tag, 0);
  }

 private:
  // Parses chunks until a statement whose keyword is in `ends` (stored in end_tag, its tokens left
  // current) or the end of input (only allowed when `ends` is empty). `start` is where the block
  // opened and `closer` the tag that must close it, for "missing 'endif'".
  std::vector<Node> parse_block(const std::set<std::string>& ends, std::string& end_tag, size_t start,
                                const std::string& closer = "") {
    std::vector<Node> nodes;
    while (chunk_ < chunks_.size()) {
      Chunk& chunk = chunks_[chunk_];
      if (chunk.kind == Chunk::Kind::text) {
        Node node;
        node.kind = Node::Kind::text;
        node.pos = chunk.pos;
        node.text = chunk.text;
        nodes.push_back(std::move(node));
        ++chunk_;
        continue;
      }
      tokens_ = &chunk.tokens;
      tok_ = 0;
      if (chunk.kind == Chunk::Kind::output) {
        Node node;
        node.kind = Node::Kind::output;
        node.pos = chunk.pos;
        node.expr = parse_expr();
        expect_end();
        nodes.push_back(std::move(node));
        ++chunk_;
        continue;
      }
      const Token& keyword = peek();
      if (keyword.kind != Tok::name) fail(keyword.pos, "expected a statement keyword");
      if (ends.count(keyword.text)) {
        end_tag = keyword.text;
        return nodes;
      }
      if (keyword.text == "if") {
        nodes.push_back(parse_if());
      } else if (keyword.text == "for") {
        nodes.push_back(parse_for());
      } else if (keyword.text == "set") {
        nodes.push_back(parse_set());
      } else if (keyword.text == "elif" || keyword.text == "else" || keyword.text == "endif" ||
                 keyword.text == "endfor") {
        fail(keyword.pos, "unexpected '" + keyword.text + "'");
      } else {
        fail(keyword.pos, "unsupported tag '" + keyword.text + "'");
      }
    }
    if (!ends.empty()) fail(start, "missing '" + closer + "'");
    return nodes;
  }

  Node parse_if() {
    Node node;
    node.kind = Node::Kind::if_;
    node.pos = next().pos;  // if
    size_t start = node.pos;
    ExprPtr cond = parse_expr();
    expect_end();
    ++chunk_;
    while (true) {
      std::string end_tag;
      std::vector<Node> body = parse_block({"elif", "else", "endif"}, end_tag, start, "endif");
      node.branches.push_back(Branch{std::move(cond), std::move(body)});
      start = next().pos;  // the end keyword
      if (end_tag == "endif") {
        expect_end();
        ++chunk_;
        return node;
      }
      if (end_tag == "elif") {
        cond = parse_expr();
      } else {
        cond = nullptr;
      }
      expect_end();
      ++chunk_;
      if (end_tag == "else") {
        std::vector<Node> else_body = parse_block({"endif"}, end_tag, start, "endif");
        node.branches.push_back(Branch{nullptr, std::move(else_body)});
        next();
        expect_end();
        ++chunk_;
        return node;
      }
    }
  }

  Node parse_for() {
    Node node;
    node.kind = Node::Kind::for_;
    node.pos = next().pos;  // for
    node.var = expect_name("a loop variable");
    if (peek().kind == Tok::op && peek().text == ",") {
      fail(peek().pos, "unsupported: unpacking several loop variables");
    }
    if (!(peek().kind == Tok::name && peek().text == "in")) fail(peek().pos, "expected 'in'");
    next();
    node.expr = parse_expr(/*allow_cond=*/false);
    if (peek().kind == Tok::name && (peek().text == "if" || peek().text == "recursive")) {
      fail(peek().pos, "unsupported: 'for ... " + peek().text + "'");
    }
    expect_end();
    ++chunk_;
    std::string end_tag;
    node.body = parse_block({"endfor", "else"}, end_tag, node.pos, "endfor");
    if (end_tag == "else") fail(peek().pos, "unsupported: 'for ... else'");
    next();
    expect_end();
    ++chunk_;
    return node;
  }

  Node parse_set() {
    Node node;
    node.kind = Node::Kind::set;
    node.pos = next().pos;  // set
    node.var = expect_name("a variable name");
    if (peek().kind == Tok::op && peek().text == ".") {
      next();
      node.attr = expect_name("an attribute name");
    }
    if (peek().kind == Tok::op && peek().text == ",") fail(peek().pos, "unsupported: unpacking in 'set'");
    if (peek().kind == Tok::end) fail(peek().pos, "unsupported: block 'set' (set ... endset)");
    if (!(peek().kind == Tok::op && peek().text == "=")) fail(peek().pos, "expected '='");
    next();
    node.expr = parse_expr();
    expect_end();
    ++chunk_;
    return node;
  }

  // Expressions, by Jinja2's precedence: conditional, or, and, not, comparison (with in), ~,
  // + -, * // % /, unary -, then primary with postfix (. [] ()) and filters/tests.
  ExprPtr parse_expr(bool allow_cond = true) {
    ExprPtr expr = parse_or();
    if (allow_cond && peek().kind == Tok::name && peek().text == "if") {
      auto cond = make(Expr::Kind::cond, next().pos);
      ExprPtr test = parse_or();
      ExprPtr otherwise;
      if (peek().kind == Tok::name && peek().text == "else") {
        next();
        otherwise = parse_expr();
      }
      cond->args.push_back(std::move(expr));
      cond->args.push_back(std::move(test));
      cond->args.push_back(std::move(otherwise));
      return cond;
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (peek().kind == Tok::name && peek().text == "or") {
      size_t pos = next().pos;  // before the right operand is parsed
      left = binary("or", pos, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (peek().kind == Tok::name && peek().text == "and") {
      size_t pos = next().pos;  // before the right operand is parsed
      left = binary("and", pos, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (peek().kind == Tok::name && peek().text == "not") {
      auto node = make(Expr::Kind::not_, next().pos);
      node->args.push_back(parse_not());
      return node;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr left = parse_concat();
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::op && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                t.text == "<=" || t.text == ">=")) {
        std::string op = t.text;
        size_t pos = next().pos;
        left = binary(op, pos, std::move(left), parse_concat());
      } else if (t.kind == Tok::name && t.text == "in") {
        size_t pos = next().pos;
        left = binary("in", pos, std::move(left), parse_concat());
      } else if (t.kind == Tok::name && t.text == "not" && peek(1).kind == Tok::name && peek(1).text == "in") {
        size_t pos = next().pos;
        next();
        left = binary("not in", pos, std::move(left), parse_concat());
      } else {
        return left;
      }
    }
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math1();
    while (peek().kind == Tok::op && peek().text == "~") {
      size_t pos = next().pos;  // before the right operand is parsed
      left = binary("~", pos, std::move(left), parse_math1());
    }
    return left;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_math2();
    while (peek().kind == Tok::op && (peek().text == "+" || peek().text == "-")) {
      std::string op = peek().text;
      size_t pos = next().pos;
      left = binary(op, pos, std::move(left), parse_math2());
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_unary();
    while (peek().kind == Tok::op &&
           (peek().text == "*" || peek().text == "/" || peek().text == "//" || peek().text == "%")) {
      std::string op = peek().text;
      size_t pos = next().pos;
      if (op == "/") fail(pos, "unsupported: '/' (true division gives floats); use '//'");
      left = binary(op, pos, std::move(left), parse_unary());
    }
    if (peek().kind == Tok::op && peek().text == "**") fail(peek().pos, "unsupported operator '**'");
    return left;
  }

  ExprPtr parse_unary() {
    if (peek().kind == Tok::op && (peek().text == "-" || peek().text == "+")) {
      bool neg = peek().text == "-";
      size_t pos = next().pos;
      ExprPtr operand = parse_unary();
      if (!neg) return operand;
      auto node = make(Expr::Kind::neg, pos);
      node->args.push_back(std::move(operand));
      return node;
    }
    ExprPtr node = parse_postfix(parse_primary());
    return parse_filters(std::move(node));
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    if (t.kind == Tok::string) {
      auto node = make(Expr::Kind::literal, t.pos);
      node->literal = Value::from(next().text);
      // Adjacent string literals concatenate, as in Python.
      while (peek().kind == Tok::string) node->literal.string += next().text;
      return node;
    }
    if (t.kind == Tok::integer) {
      auto node = make(Expr::Kind::literal, t.pos);
      node->literal = Value::from(next().integer);
      return node;
    }
    if (t.kind == Tok::name) {
      const std::string& n = t.text;
      auto node = make(Expr::Kind::literal, t.pos);
      if (n == "true" || n == "True") {
        node->literal = Value::from(true);
      } else if (n == "false" || n == "False") {
        node->literal = Value::from(false);
      } else if (n == "none" || n == "None") {
        node->literal = Value::none();
      } else {
        node->kind = Expr::Kind::name;
        node->name = n;
      }
      next();
      return node;
    }
    if (t.kind == Tok::op && t.text == "(") {
      next();
      ExprPtr inner = parse_expr();
      if (peek().kind == Tok::op && peek().text == ",") fail(peek().pos, "unsupported: tuples");
      expect_op(")");
      return inner;
    }
    if (t.kind == Tok::op && t.text == "[") {
      auto node = make(Expr::Kind::list, next().pos);
      while (!(peek().kind == Tok::op && peek().text == "]")) {
        node->args.push_back(parse_expr());
        if (peek().kind == Tok::op && peek().text == ",") {
          next();
        } else {
          break;
        }
      }
      expect_op("]");
      return node;
    }
    if (t.kind == Tok::op && t.text == "{") {
      auto node = make(Expr::Kind::dict, next().pos);
      while (!(peek().kind == Tok::op && peek().text == "}")) {
        node->args.push_back(parse_expr());
        expect_op(":");
        node->args.push_back(parse_expr());
        if (peek().kind == Tok::op && peek().text == ",") {
          next();
        } else {
          break;
        }
      }
      expect_op("}");
      return node;
    }
    if (t.kind == Tok::end) fail(t.pos, "expected an expression");
    fail(t.pos, "unexpected '" + t.text + "'");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::op && t.text == ".") {
        size_t pos = next().pos;
        auto attr = make(Expr::Kind::attr, pos);
        if (peek().kind == Tok::integer) {
          attr->kind = Expr::Kind::item;
          auto index = make(Expr::Kind::literal, peek().pos);
          index->literal = Value::from(next().integer);
          attr->args.push_back(std::move(node));
          attr->args.push_back(std::move(index));
        } else {
          attr->name = expect_name("an attribute name");
          attr->args.push_back(std::move(node));
        }
        node = std::move(attr);
      } else if (t.kind == Tok::op && t.text == "[") {
        size_t pos = next().pos;
        ExprPtr start, stop, step;
        bool is_slice = false;
        if (!(peek().kind == Tok::op && peek().text == ":")) start = parse_expr();
        if (peek().kind == Tok::op && peek().text == ":") {
          is_slice = true;
          next();
          if (!(peek().kind == Tok::op && (peek().text == "]" || peek().text == ":"))) stop = parse_expr();
          if (peek().kind == Tok::op && peek().text == ":") {
            next();
            if (!(peek().kind == Tok::op && peek().text == "]")) step = parse_expr();
          }
        }
        expect_op("]");
        auto item = make(is_slice ? Expr::Kind::slice : Expr::Kind::item, pos);
        item->args.push_back(std::move(node));
        item->args.push_back(std::move(start));
        if (is_slice) {
          item->args.push_back(std::move(stop));
          item->args.push_back(std::move(step));
        }
        node = std::move(item);
      } else if (t.kind == Tok::op && t.text == "(") {
        auto call = make(Expr::Kind::call, node->pos);
        call->args.push_back(std::move(node));
        parse_call_args(*call);
        node = std::move(call);
      } else {
        return node;
      }
    }
  }

  // `(` args `)`: positional then key=value arguments, appended to node.args / node.kwnames.
  void parse_call_args(Expr& node) {
    expect_op("(");
    while (!(peek().kind == Tok::op && peek().text == ")")) {
      if (peek().kind == Tok::name && peek(1).kind == Tok::op && peek(1).text == "=") {
        node.kwnames.push_back(next().text);
        next();
        node.args.push_back(parse_expr());
      } else {
        if (!node.kwnames.empty()) fail(peek().pos, "positional argument after a keyword argument");
        node.args.push_back(parse_expr());
      }
      if (peek().kind == Tok::op && peek().text == ",") {
        next();
      } else {
        break;
      }
    }
    expect_op(")");
  }

  ExprPtr parse_filters(ExprPtr node) {
    while (true) {
      const Token& t = peek();
      if (t.kind == Tok::op && t.text == "|") {
        next();
        size_t pos = peek().pos;
        std::string name = expect_name("a filter name");
        if (!known_filters().count(name)) fail(pos, "unsupported filter '" + name + "'");
        auto filter = make(Expr::Kind::filter, pos);
        filter->name = name;
        filter->args.push_back(std::move(node));
        if (peek().kind == Tok::op && peek().text == "(") parse_call_args(*filter);
        node = std::move(filter);
      } else if (t.kind == Tok::name && t.text == "is") {
        next();
        auto test = make(Expr::Kind::test, peek().pos);
        if (peek().kind == Tok::name && peek().text == "not") {
          next();
          test->negated = true;
        }
        size_t pos = peek().pos;
        std::string name;
        if (peek().kind == Tok::name) {
          name = next().text;
        } else {
          fail(pos, "expected a test name");
        }
        if (!known_tests().count(name)) fail(pos, "unsupported test '" + name + "'");
        test->name = name;
        test->args.push_back(std::move(node));
        if (peek().kind == Tok::op && peek().text == "(") {
          parse_call_args(*test);
        } else if (name == "divisibleby") {
          // `is divisibleby 3` takes its argument without parentheses.
          test->args.push_back(parse_primary());
        }
        node = std::move(test);
      } else {
        return node;
      }
    }
  }

  ExprPtr make(Expr::Kind kind, size_t pos) {
    auto node = std::make_unique<Expr>();
    node->kind = kind;
    node->pos = pos;
    return node;
  }

  ExprPtr binary(std::string op, size_t pos, ExprPtr left, ExprPtr right) {
    auto node = make(Expr::Kind::binary, pos);
    node->name = std::move(op);
    node->args.push_back(std::move(left));
    node->args.push_back(std::move(right));
    return node;
  }

  const Token& peek(size_t ahead = 0) const {
    size_t i = std::min(tok_ + ahead, tokens_->size() - 1);
    return (*tokens_)[i];
  }
  const Token& next() {
    const Token& t = (*tokens_)[tok_];
    if (tok_ + 1 < tokens_->size()) ++tok_;
    return t;
  }
  std::string expect_name(const char* what) {
    if (peek().kind != Tok::name) fail(peek().pos, std::string("expected ") + what);
    return next().text;
  }
  void expect_op(const char* op) {
    if (!(peek().kind == Tok::op && peek().text == op)) {
      fail(peek().pos, std::string("expected '") + op + "'" +
                           (peek().kind == Tok::end ? " before the end of the tag" : ""));
    }
    next();
  }
  void expect_end() {
    if (peek().kind != Tok::end) fail(peek().pos, "unexpected '" + peek().text + "' (expected the end of the tag)");
  }

  std::vector<Chunk> chunks_;
  size_t chunk_ = 0;
  const std::vector<Token>* tokens_ = nullptr;
  size_t tok_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Renderer

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::undefined: return "undefined";
    case Value::Kind::none: return "none";
    case Value::Kind::boolean: return "boolean";
    case Value::Kind::integer: return "integer";
    case Value::Kind::string: return "string";
    case Value::Kind::list: return "list";
    case Value::Kind::dict: return "dict";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
    case Value::Kind::none: return false;
    case Value::Kind::boolean: return v.boolean;
    case Value::Kind::integer: return v.integer != 0;
    case Value::Kind::string: return !v.string.empty();
    case Value::Kind::list: return !v.list->empty();
    case Value::Kind::dict: return !v.dict->empty();
  }
  return false;
}

std::string repr(const Value& v);

// str() of a value, as Jinja prints it; undefined prints as "".
std::string str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined: return "";
    case Value::Kind::none: return "None";
    case Value::Kind::boolean: return v.boolean ? "True" : "False";
    case Value::Kind::integer: return std::to_string(v.integer);
    case Value::Kind::string: return v.string;
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::string: {
      bool has_single = v.string.find('\'') != std::string::npos;
      bool has_double = v.string.find('"') != std::string::npos;
      char q = has_single && !has_double ? '"' : '\'';
      std::string out(1, q);
      for (char c : v.string) {
        if (c == q || c == '\\') out += '\\';
        if (c == '\n') {
          out += "\\n";
        } else {
          out += c;
        }
      }
      return out + q;
    }
    case Value::Kind::list: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
      return out + "]";
    }
    case Value::Kind::dict: {
      std::string out = v.is_namespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, value] : *v.dict) {
        out += (first ? "'" : ", '") + k + "': " + repr(value);
        first = false;
      }
      return out + (v.is_namespace ? "}>" : "}");
    }
    default: return str(v);
  }
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// tojson, with the separators Python's json.dumps uses (", " and ": "). Non-ASCII is kept as is.
std::string to_json(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
    case Value::Kind::none: return "null";
    case Value::Kind::boolean: return v.boolean ? "true" : "false";
    case Value::Kind::integer: return std::to_string(v.integer);
    case Value::Kind::string: return json_string(v.string);
    case Value::Kind::list: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + to_json((*v.list)[i]);
      return out + "]";
    }
    case Value::Kind::dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, value] : *v.dict) {
        out += (first ? "" : ", ") + json_string(k) + ": " + to_json(value);
        first = false;
      }
      return out + "}";
    }
  }
  return "null";
}

bool equal(const Value& a, const Value& b) {
  auto numeric = [](const Value& v) { return v.kind == Value::Kind::integer || v.kind == Value::Kind::boolean; };
  if (numeric(a) && numeric(b)) {
    int64_t x = a.kind == Value::Kind::boolean ? a.boolean : a.integer;
    int64_t y = b.kind == Value::Kind::boolean ? b.boolean : b.integer;
    return x == y;
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::undefined:
    case Value::Kind::none: return true;
    case Value::Kind::string: return a.string == b.string;
    case Value::Kind::list: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    }
    case Value::Kind::dict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* other = b.find(k);
        if (other == nullptr || !equal(v, *other)) return false;
      }
      return true;
    }
    default: return false;
  }
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string ascii_upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return s;
}
std::string ascii_lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// Python's str.strip family; `chars` empty means whitespace.
std::string strip(const std::string& s, bool left, bool right, const std::string& chars = "") {
  auto strippable = [&](char c) { return chars.empty() ? is_space(c) : chars.find(c) != std::string::npos; };
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e && strippable(s[b])) ++b;
  }
  if (right) {
    while (e > b && strippable(s[e - 1])) --e;
  }
  return s.substr(b, e - b);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t i = s.find(from, pos);
    if (i == std::string::npos) break;
    out.append(s, pos, i - pos);
    out += to;
    pos = i + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Python's index normalization for a[i] and slices.
int64_t normalize_index(int64_t i, int64_t size) { return i < 0 ? i + size : i; }

class Renderer {
 public:
  explicit Renderer(const Dict& globals) : globals_(globals) {}

  std::string run(const std::vector<Node>& nodes) {
    scopes_.emplace_back();
    exec(nodes);
    return std::move(out_);
  }

 private:
  void exec(const std::vector<Node>& nodes) {
    for (const Node& node : nodes) exec(node);
  }

  void exec(const Node& node) {
    switch (node.kind) {
      case Node::Kind::text: out_ += node.text; return;
      case Node::Kind::output: out_ += str(eval(*node.expr)); return;
      case Node::Kind::if_:
        for (const Branch& branch : node.branches) {
          if (branch.cond == nullptr || truthy(eval(*branch.cond))) {
            exec(branch.body);
            return;
          }
        }
        return;
      case Node::Kind::for_: exec_for(node); return;
      case Node::Kind::set: {
        Value value = eval(*node.expr);
        if (node.attr.empty()) {
          assign(scopes_.back(), node.var, std::move(value));
          return;
        }
        Value target = lookup(node.var);
        if (!target.is_namespace) fail(node.pos, "'" + node.var + "' is not a namespace(); cannot set an attribute");
        assign(*target.dict, node.attr, std::move(value));
        return;
      }
    }
  }

  void exec_for(const Node& node) {
    Value iterable = eval(*node.expr);
    List items;
    switch (iterable.kind) {
      case Value::Kind::undefined: break;
      case Value::Kind::list: items = *iterable.list; break;
      case Value::Kind::dict:
        for (const auto& [k, v] : *iterable.dict) items.push_back(Value::from(k));
        break;
      case Value::Kind::string:
        for (size_t i = 0; i < iterable.string.size();) {
          size_t n = 1;
          unsigned char c = static_cast<unsigned char>(iterable.string[i]);
          if (c >= 0xF0) {
            n = 4;
          } else if (c >= 0xE0) {
            n = 3;
          } else if (c >= 0xC0) {
            n = 2;
          }
          items.push_back(Value::from(iterable.string.substr(i, n)));
          i += n;
        }
        break;
      default: fail(node.expr->pos, std::string("cannot iterate over a ") + kind_name(iterable.kind));
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      Dict loop = {
          {"index", Value::from(i + 1)},
          {"index0", Value::from(i)},
          {"revindex", Value::from(length - i)},
          {"revindex0", Value::from(length - i - 1)},
          {"first", Value::from(i == 0)},
          {"last", Value::from(i == length - 1)},
          {"length", Value::from(length)},
          {"previtem", i > 0 ? items[i - 1] : Value()},
          {"nextitem", i + 1 < length ? items[i + 1] : Value()},
      };
      scopes_.emplace_back();
      assign(scopes_.back(), "loop", Value::from(std::move(loop)));
      assign(scopes_.back(), node.var, items[i]);
      exec(node.body);
      scopes_.pop_back();
    }
  }

  static void assign(Dict& scope, const std::string& name, Value value) {
    for (auto& [k, v] : scope) {
      if (k == name) {
        v = std::move(value);
        return;
      }
    }
    scope.emplace_back(name, std::move(value));
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      for (const auto& [k, v] : *scope) {
        if (k == name) return v;
      }
    }
    for (const auto& [k, v] : globals_) {
      if (k == name) return v;
    }
    Value undefined;
    undefined.string = name;
    return undefined;
  }

  [[noreturn]] void undefined_error(size_t pos, const Value& v) {
    fail(pos, "'" + (v.string.empty() ? std::string("value") : v.string) + "' is undefined");
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.literal;
      case Expr::Kind::name: return lookup(e.name);
      case Expr::Kind::attr: {
        Value obj = eval(*e.args[0]);
        if (obj.kind == Value::Kind::undefined) undefined_error(e.args[0]->pos, obj);
        if (const Value* v = obj.find(e.name)) return *v;
        Value undefined;
        undefined.string = describe(*e.args[0]) + "." + e.name;
        return undefined;
      }
      case Expr::Kind::item: return eval_item(e);
      case Expr::Kind::slice: return eval_slice(e);
      case Expr::Kind::call: return eval_call(e);
      case Expr::Kind::filter: return eval_filter(e);
      case Expr::Kind::test: {
        bool result = eval_test(e);
        return Value::from(e.negated ? !result : result);
      }
      case Expr::Kind::not_: return Value::from(!truthy(eval(*e.args[0])));
      case Expr::Kind::neg: {
        Value v = eval(*e.args[0]);
        if (v.kind != Value::Kind::integer) fail(e.pos, std::string("cannot negate a ") + kind_name(v.kind));
        return Value::from(-v.integer);
      }
      case Expr::Kind::binary: return eval_binary(e);
      case Expr::Kind::cond: {
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value();
      }
      case Expr::Kind::list: {
        List items;
        for (const auto& arg : e.args) items.push_back(eval(*arg));
        return Value::from(std::move(items));
      }
      case Expr::Kind::dict: {
        Dict dict;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value key = eval(*e.args[i]);
          if (key.kind != Value::Kind::string) fail(e.args[i]->pos, "dict keys must be strings");
          assign(dict, key.string, eval(*e.args[i + 1]));
        }
        return Value::from(std::move(dict));
      }
    }
    fail(e.pos, "unknown expression");
  }

  // The source-like name of an expression, for "'message.foo' is undefined".
  static std::string describe(const Expr& e) {
    if (e.kind == Expr::Kind::name) return e.name;
    if (e.kind == Expr::Kind::attr) return describe(*e.args[0]) + "." + e.name;
    return "value";
  }

  Value eval_item(const Expr& e) {
    Value obj = eval(*e.args[0]);
    Value key = eval(*e.args[1]);
    if (obj.kind == Value::Kind::undefined) undefined_error(e.args[0]->pos, obj);
    if (obj.kind == Value::Kind::dict) {
      if (key.kind != Value::Kind::string) fail(e.args[1]->pos, "dict keys must be strings");
      if (const Value* v = obj.find(key.string)) return *v;
      Value undefined;
      undefined.string = describe(*e.args[0]) + "['" + key.string + "']";
      return undefined;
    }
    if (obj.kind == Value::Kind::list || obj.kind == Value::Kind::string) {
      if (key.kind != Value::Kind::integer) fail(e.args[1]->pos, "indices must be integers");
      int64_t size = obj.kind == Value::Kind::list ? static_cast<int64_t>(obj.list->size())
                                                   : static_cast<int64_t>(obj.string.size());
      int64_t i = normalize_index(key.integer, size);
      if (i < 0 || i >= size) return Value();
      return obj.kind == Value::Kind::list ? (*obj.list)[i] : Value::from(obj.string.substr(i, 1));
    }
    fail(e.pos, std::string("cannot index a ") + kind_name(obj.kind));
  }

  Value eval_slice(const Expr& e) {
    Value obj = eval(*e.args[0]);
    if (obj.kind != Value::Kind::list && obj.kind != Value::Kind::string) {
      if (obj.kind == Value::Kind::undefined) undefined_error(e.args[0]->pos, obj);
      fail(e.pos, std::string("cannot slice a ") + kind_name(obj.kind));
    }
    auto bound = [&](const ExprPtr& p) -> std::optional<int64_t> {
      if (!p) return std::nullopt;
      Value v = eval(*p);
      if (v.kind == Value::Kind::none) return std::nullopt;
      if (v.kind != Value::Kind::integer) fail(p->pos, "slice bounds must be integers");
      return v.integer;
    };
    std::optional<int64_t> start = bound(e.args[1]), stop = bound(e.args[2]), step_opt = bound(e.args[3]);
    int64_t step = step_opt.value_or(1);
    if (step == 0) fail(e.pos, "slice step cannot be zero");
    int64_t size = obj.kind == Value::Kind::list ? static_cast<int64_t>(obj.list->size())
                                                 : static_cast<int64_t>(obj.string.size());
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t i = normalize_index(*v, size);
      if (step > 0) return std::clamp<int64_t>(i, 0, size);
      return std::clamp<int64_t>(i, -1, size - 1);
    };
    int64_t b = clamp(start, step > 0 ? 0 : size - 1);
    int64_t s = clamp(stop, step > 0 ? size : -1);
    List items;
    std::string text;
    for (int64_t i = b; step > 0 ? i < s : i > s; i += step) {
      if (obj.kind == Value::Kind::list) {
        items.push_back((*obj.list)[i]);
      } else {
        text += obj.string[i];
      }
    }
    return obj.kind == Value::Kind::list ? Value::from(std::move(items)) : Value::from(std::move(text));
  }

  // Evaluated arguments of a call or filter: positional (from `first`) and keyword ones.
  struct Args {
    List positional;
    Dict keyword;
    const Value* get(size_t index, const std::string& name) const {
      if (index < positional.size()) return &positional[index];
      for (const auto& [k, v] : keyword) {
        if (k == name) return &v;
      }
      return nullptr;
    }
  };
  Args eval_args(const Expr& e, size_t first) {
    Args args;
    size_t num_keyword = e.kwnames.size();
    size_t num_positional = e.args.size() - num_keyword;
    for (size_t i = first; i < num_positional; ++i) args.positional.push_back(eval(*e.args[i]));
    for (size_t i = 0; i < num_keyword; ++i) {
      args.keyword.emplace_back(e.kwnames[i], eval(*e.args[num_positional + i]));
    }
    return args;
  }

  std::string string_arg(const Expr& e, const Args& args, size_t index, const std::string& name,
                         const char* what) {
    const Value* v = args.get(index, name);
    if (v == nullptr || v->kind != Value::Kind::string) fail(e.pos, std::string(what) + " needs a string argument");
    return v->string;
  }

  Value eval_call(const Expr& e) {
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::Kind::attr) {
      Value obj = eval(*callee.args[0]);
      if (obj.kind == Value::Kind::undefined) undefined_error(callee.args[0]->pos, obj);
      return call_method(e, obj, callee.name, eval_args(e, 1));
    }
    if (callee.kind != Expr::Kind::name) fail(e.pos, "only functions and methods can be called");
    Value bound = lookup(callee.name);
    if (bound.kind != Value::Kind::undefined) fail(e.pos, "'" + callee.name + "' is not callable");
    Args args = eval_args(e, 1);
    if (callee.name == "raise_exception") {
      fail(e.pos, "raised: " + (args.positional.empty() ? std::string() : str(args.positional[0])));
    }
    if (callee.name == "namespace") {
      Value ns = Value::from(Dict(args.keyword));
      ns.is_namespace = true;
      return ns;
    }
    if (callee.name == "range") {
      std::vector<int64_t> n;
      for (const Value& v : args.positional) {
        if (v.kind != Value::Kind::integer) fail(e.pos, "range() needs integers");
        n.push_back(v.integer);
      }
      if (n.empty() || n.size() > 3) fail(e.pos, "range() takes 1 to 3 arguments");
      int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0], step = n.size() > 2 ? n[2] : 1;
      if (step == 0) fail(e.pos, "range() step cannot be zero");
      List items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) items.push_back(Value::from(i));
      return Value::from(std::move(items));
    }
    fail(callee.pos, "unsupported function '" + callee.name + "'");
  }

  Value call_method(const Expr& e, const Value& obj, const std::string& name, const Args& args) {
    if (obj.kind == Value::Kind::string) {
      const std::string& s = obj.string;
      auto chars = [&]() {
        const Value* v = args.get(0, "chars");
        return v != nullptr && v->kind == Value::Kind::string ? v->string : std::string();
      };
      if (name == "strip") return Value::from(strip(s, true, true, chars()));
      if (name == "lstrip") return Value::from(strip(s, true, false, chars()));
      if (name == "rstrip") return Value::from(strip(s, false, true, chars()));
      if (name == "upper") return Value::from(ascii_upper(s));
      if (name == "lower") return Value::from(ascii_lower(s));
      if (name == "startswith") {
        std::string prefix = string_arg(e, args, 0, "prefix", "startswith()");
        return Value::from(s.compare(0, prefix.size(), prefix) == 0);
      }
      if (name == "endswith") {
        std::string suffix = string_arg(e, args, 0, "suffix", "endswith()");
        return Value::from(s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0);
      }
      if (name == "replace") {
        return Value::from(replace_all(s, string_arg(e, args, 0, "old", "replace()"),
                                       string_arg(e, args, 1, "new", "replace()")));
      }
      if (name == "split") {
        const Value* sep = args.get(0, "sep");
        List parts;
        if (sep == nullptr || sep->kind == Value::Kind::none) {
          size_t i = 0;
          while (true) {
            while (i < s.size() && is_space(s[i])) ++i;
            if (i >= s.size()) break;
            size_t j = i;
            while (j < s.size() && !is_space(s[j])) ++j;
            parts.push_back(Value::from(s.substr(i, j - i)));
            i = j;
          }
        } else {
          if (sep->kind != Value::Kind::string || sep->string.empty()) fail(e.pos, "split() needs a non-empty string");
          size_t pos = 0;
          while (true) {
            size_t i = s.find(sep->string, pos);
            parts.push_back(Value::from(s.substr(pos, i == std::string::npos ? std::string::npos : i - pos)));
            if (i == std::string::npos) break;
            pos = i + sep->string.size();
          }
        }
        return Value::from(std::move(parts));
      }
    } else if (obj.kind == Value::Kind::dict) {
      if (name == "get") {
        const Value* key = args.get(0, "key");
        if (key == nullptr || key->kind != Value::Kind::string) fail(e.pos, "get() needs a string key");
        if (const Value* v = obj.find(key->string)) return *v;
        const Value* fallback = args.get(1, "default");
        return fallback ? *fallback : Value::none();
      }
      if (name == "items" || name == "keys" || name == "values") {
        List items;
        for (const auto& [k, v] : *obj.dict) {
          if (name == "items") {
            items.push_back(Value::from(List{Value::from(k), v}));
          } else {
            items.push_back(name == "keys" ? Value::from(k) : v);
          }
        }
        return Value::from(std::move(items));
      }
    }
    fail(e.pos, std::string("unsupported method '") + name + "' of a " + kind_name(obj.kind));
  }

  Value eval_filter(const Expr& e) {
    Value v = eval(*e.args[0]);
    Args args = eval_args(e, 1);
    const std::string& f = e.name;
    auto need = [&](Value::Kind kind) {
      if (v.kind == Value::Kind::undefined) undefined_error(e.args[0]->pos, v);
      if (v.kind != kind) fail(e.pos, "filter '" + f + "' needs a " + kind_name(kind) + ", not a " + kind_name(v.kind));
    };
    if (f == "default" || f == "d") {
      const Value* fallback = args.get(0, "default_value");
      const Value* boolean = args.get(1, "boolean");
      bool use_fallback = v.kind == Value::Kind::undefined || (boolean && truthy(*boolean) && !truthy(v));
      if (use_fallback) return fallback ? *fallback : Value::from("");
      return v;
    }
    if (f == "safe") return v;
    if (f == "string") return Value::from(str(v));
    if (f == "tojson") return Value::from(to_json(v));
    if (f == "trim") {
      need(Value::Kind::string);
      const Value* chars = args.get(0, "chars");
      return Value::from(strip(v.string, true, true, chars && chars->kind == Value::Kind::string ? chars->string : ""));
    }
    if (f == "upper") {
      need(Value::Kind::string);
      return Value::from(ascii_upper(v.string));
    }
    if (f == "lower") {
      need(Value::Kind::string);
      return Value::from(ascii_lower(v.string));
    }
    if (f == "capitalize") {
      need(Value::Kind::string);
      std::string s = ascii_lower(v.string);
      if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
      return Value::from(s);
    }
    if (f == "replace") {
      need(Value::Kind::string);
      return Value::from(replace_all(v.string, string_arg(e, args, 0, "old", "replace"),
                                     string_arg(e, args, 1, "new", "replace")));
    }
    if (f == "length" || f == "count") {
      switch (v.kind) {
        case Value::Kind::string: return Value::from(static_cast<int64_t>(utf8_length(v.string)));
        case Value::Kind::list: return Value::from(static_cast<int64_t>(v.list->size()));
        case Value::Kind::dict: return Value::from(static_cast<int64_t>(v.dict->size()));
        case Value::Kind::undefined: return Value::from(int64_t{0});
        default: fail(e.pos, std::string("a ") + kind_name(v.kind) + " has no length");
      }
    }
    if (f == "int") {
      if (v.kind == Value::Kind::integer) return v;
      if (v.kind == Value::Kind::boolean) return Value::from(static_cast<int64_t>(v.boolean));
      if (v.kind == Value::Kind::string) {
        try {
          size_t used = 0;
          int64_t i = std::stoll(strip(v.string, true, true), &used);
          return Value::from(i);
        } catch (const std::exception&) {
        }
      }
      const Value* fallback = args.get(0, "default");
      return fallback ? *fallback : Value::from(int64_t{0});
    }
    if (f == "first" || f == "last") {
      if (v.kind == Value::Kind::list) {
        if (v.list->empty()) return Value();
        return f == "first" ? v.list->front() : v.list->back();
      }
      need(Value::Kind::string);
      if (v.string.empty()) return Value();
      return Value::from(f == "first" ? v.string.substr(0, 1) : v.string.substr(v.string.size() - 1));
    }
    if (f == "join") {
      need(Value::Kind::list);
      const Value* sep = args.get(0, "d");
      std::string s, separator = sep && sep->kind == Value::Kind::string ? sep->string : "";
      for (size_t i = 0; i < v.list->size(); ++i) s += (i ? separator : "") + str((*v.list)[i]);
      return Value::from(s);
    }
    if (f == "list") {
      if (v.kind == Value::Kind::list) return v;
      if (v.kind == Value::Kind::dict) return call_method(e, v, "keys", Args{});
      need(Value::Kind::string);
      List chars;
      for (char c : v.string) chars.push_back(Value::from(std::string(1, c)));
      return Value::from(std::move(chars));
    }
    if (f == "reverse") {
      if (v.kind == Value::Kind::string) return Value::from(std::string(v.string.rbegin(), v.string.rend()));
      need(Value::Kind::list);
      List items(v.list->rbegin(), v.list->rend());
      return Value::from(std::move(items));
    }
    if (f == "items") {
      need(Value::Kind::dict);
      return call_method(e, v, "items", Args{});
    }
    fail(e.pos, "unsupported filter '" + f + "'");
  }

  bool eval_test(const Expr& e) {
    Value v = eval(*e.args[0]);
    const std::string& t = e.name;
    if (t == "defined") return v.kind != Value::Kind::undefined;
    if (t == "undefined") return v.kind == Value::Kind::undefined;
    if (t == "none") return v.kind == Value::Kind::none;
    if (t == "string") return v.kind == Value::Kind::string;
    if (t == "number") return v.kind == Value::Kind::integer || v.kind == Value::Kind::boolean;
    if (t == "integer") return v.kind == Value::Kind::integer;
    if (t == "boolean") return v.kind == Value::Kind::boolean;
    if (t == "mapping") return v.kind == Value::Kind::dict;
    if (t == "sequence" || t == "iterable") {
      return v.kind == Value::Kind::list || v.kind == Value::Kind::string || v.kind == Value::Kind::dict;
    }
    if (t == "true") return v.kind == Value::Kind::boolean && v.boolean;
    if (t == "false") return v.kind == Value::Kind::boolean && !v.boolean;
    if (t == "lower") return v.kind == Value::Kind::string && ascii_lower(v.string) == v.string;
    if (t == "upper") return v.kind == Value::Kind::string && ascii_upper(v.string) == v.string;
    if (v.kind != Value::Kind::integer) fail(e.pos, "test '" + t + "' needs an integer");
    if (t == "odd") return v.integer % 2 != 0;
    if (t == "even") return v.integer % 2 == 0;
    if (t == "divisibleby") {
      Args args = eval_args(e, 1);
      if (args.positional.empty() || args.positional[0].kind != Value::Kind::integer || args.positional[0].integer == 0) {
        fail(e.pos, "divisibleby needs a non-zero integer");
      }
      return v.integer % args.positional[0].integer == 0;
    }
    fail(e.pos, "unsupported test '" + t + "'");
  }

  Value eval_binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value left = eval(*e.args[0]);
      return truthy(left) ? eval(*e.args[1]) : left;
    }
    if (op == "or") {
      Value left = eval(*e.args[0]);
      return truthy(left) ? left : eval(*e.args[1]);
    }
    Value a = eval(*e.args[0]);
    Value b = eval(*e.args[1]);
    if (op == "~") return Value::from(str(a) + str(b));
    if (op == "==") return Value::from(equal(a, b));
    if (op == "!=") return Value::from(!equal(a, b));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.kind == Value::Kind::string) {
        if (a.kind != Value::Kind::string) fail(e.pos, "'in <string>' needs a string on the left");
        found = b.string.find(a.string) != std::string::npos;
      } else if (b.kind == Value::Kind::list) {
        found = std::any_of(b.list->begin(), b.list->end(), [&](const Value& item) { return equal(a, item); });
      } else if (b.kind == Value::Kind::dict) {
        found = a.kind == Value::Kind::string && b.find(a.string) != nullptr;
      } else if (b.kind != Value::Kind::undefined) {
        fail(e.pos, std::string("cannot test membership in a ") + kind_name(b.kind));
      }
      return Value::from(op == "in" ? found : !found);
    }
    if (a.kind == Value::Kind::undefined) undefined_error(e.args[0]->pos, a);
    if (b.kind == Value::Kind::undefined) undefined_error(e.args[1]->pos, b);
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp = 0;
      if (a.kind == Value::Kind::integer && b.kind == Value::Kind::integer) {
        cmp = a.integer < b.integer ? -1 : a.integer > b.integer ? 1 : 0;
      } else if (a.kind == Value::Kind::string && b.kind == Value::Kind::string) {
        cmp = a.string.compare(b.string);
      } else {
        fail(e.pos, std::string("cannot compare a ") + kind_name(a.kind) + " with a " + kind_name(b.kind));
      }
      if (op == "<") return Value::from(cmp < 0);
      if (op == ">") return Value::from(cmp > 0);
      if (op == "<=") return Value::from(cmp <= 0);
      return Value::from(cmp >= 0);
    }
    if (op == "+") {
      if (a.kind == Value::Kind::string && b.kind == Value::Kind::string) return Value::from(a.string + b.string);
      if (a.kind == Value::Kind::list && b.kind == Value::Kind::list) {
        List items = *a.list;
        items.insert(items.end(), b.list->begin(), b.list->end());
        return Value::from(std::move(items));
      }
    }
    if (op == "*" && a.kind == Value::Kind::string && b.kind == Value::Kind::integer) {
      std::string s;
      for (int64_t i = 0; i < b.integer; ++i) s += a.string;
      return Value::from(s);
    }
    if (a.kind != Value::Kind::integer || b.kind != Value::Kind::integer) {
      fail(e.pos, "unsupported operand types for '" + op + "': " + kind_name(a.kind) + " and " + kind_name(b.kind));
    }
    int64_t x = a.integer, y = b.integer;
    if (op == "+") return Value::from(x + y);
    if (op == "-") return Value::from(x - y);
    if (op == "*") return Value::from(x * y);
    if (y == 0) fail(e.pos, "division by zero");
    // Python's floor division and modulo: the result takes the divisor's sign.
    int64_t q = x / y, r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) {
      --q;
      r += y;
    }
    if (op == "//") return Value::from(q);
    return Value::from(r);
  }

  const Dict& globals_;
  std::vector<Dict> scopes_;  // the template's top scope, then one per enclosing loop iteration
  std::string out_;
};

}  // namespace

struct Template::Impl {
  std::string source;
  std::vector<Node> nodes;
};

Result<Template> Template::parse(const std::string& source, const Options& options) {
  try {
    auto impl = std::make_shared<Impl>();
    impl->source = source;
    impl->nodes = Parser(Lexer(impl->source, options).run()).run();
    return Template(std::move(impl));
  } catch (const JinjaError& e) {
    return error(Code::invalid_argument, where(source, e.pos) + ": " + e.message);
  }
}

Result<std::string> Template::render(const Dict& globals) const {
  try {
    return Renderer(globals).run(impl_->nodes);
  } catch (const JinjaError& e) {
    return error(Code::invalid_argument, where(impl_->source, e.pos) + ": " + e.message);
  }
}

}  // namespace cairn::detail::jinja

// MLflow's search grammar (filter strings and order_by clauses), parsed once per search and
// checked against what one kind of entity offers (a SearchDomain), then evaluated per item.
// The grammar and its rules are described in storage/registry_store.h.
//
// Errors are bad_request with a message that starts with "filter: " or "order_by[i]: " and
// names the 1-based character position and the token that is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"
#include "storage/detail/registry_codec.h"

namespace cairn::storage::detail {

enum class Entity : uint8_t {
  attribute,  // attributes.KEY, or a bare name where the domain allows it
  metric,
  param,
  tag,
};

enum class Comparator : uint8_t { eq, ne, lt, le, gt, ge, like, ilike, in, not_in };
std::string_view comparator_text(Comparator op);

enum class ValueKind : uint8_t { number, text };

struct FilterValue {
  enum class Kind : uint8_t { number, text, list };
  Kind kind = Kind::text;
  double number = 0;
  std::string text;               // kind text
  std::vector<std::string> list;  // kind list
};

// One `IDENT OP VALUE` clause as written, before it is checked against a domain.
struct Clause {
  bool qualified = false;  // IDENT had an entity prefix (metrics., tags., ...)
  Entity entity = Entity::attribute;
  std::string key;
  Comparator op = Comparator::eq;
  FilterValue value;
  size_t position = 0;        // 1-based position of IDENT
  size_t value_position = 0;  // 1-based position of VALUE
};

// The clauses of `filter` (none for an empty or blank filter).
Result<std::vector<Clause>> parse_filter(std::string_view filter);

struct OrderClause {
  bool qualified = false;
  Entity entity = Entity::attribute;
  std::string key;
  bool ascending = true;
};
// One order_by entry: `IDENT [ASC|DESC]`; `field` names it in errors ("order_by[0]").
Result<OrderClause> parse_order_by(std::string_view text, std::string_view field);

// An attribute of a domain. Several entries may share an id (aliases such as created/start_time).
struct AttributeSpec {
  std::string_view name;
  int id;
  ValueKind kind;
};

// What one kind of entity offers to filters and order_by.
struct SearchDomain {
  std::string_view what;  // "runs", "experiments", ... for messages
  std::vector<AttributeSpec> attributes;
  bool metrics = false;
  bool params = false;
  bool tags = false;
  // true: a bare IDENT (`name`) names an attribute; false: IDENT must have an entity prefix.
  bool bare_attributes = false;
};

struct Field {
  Entity entity = Entity::attribute;
  int attribute = -1;  // the AttributeSpec id when entity is attribute
  std::string key;     // the metric, param or tag key
  ValueKind kind = ValueKind::text;
};

struct Condition {
  Field field;
  Comparator op = Comparator::eq;
  FilterValue value;
};

struct OrderTerm {
  Field field;
  bool ascending = true;
};

// Parses `filter` and checks each clause against `domain`: the entity and attribute exist, the
// comparator suits the field's kind, and the value's type suits the comparator.
Result<std::vector<Condition>> bind_filter(const SearchDomain& domain, std::string_view filter);
// Parses and checks each order_by entry against `domain`.
Result<std::vector<OrderTerm>> bind_order_by(const SearchDomain& domain,
                                             const std::vector<std::string>& order_by);

// A field's value for one item; text views are valid while the item is.
struct FieldValue {
  enum class State : uint8_t { missing, number, text };
  State state = State::missing;
  double number = 0;
  std::string_view text;

  static FieldValue missing() { return {}; }
  static FieldValue of(double value) { return {State::number, value, {}}; }
  static FieldValue of(std::string_view value) { return {State::text, 0, value}; }
};

// Whether `value` satisfies `condition` (a missing value satisfies nothing).
bool condition_holds(const Condition& condition, const FieldValue& value);
// SQL LIKE: '%' matches any run of bytes, '_' exactly one; ILIKE folds ASCII case.
bool like_match(std::string_view text, std::string_view pattern, bool ignore_case);
// The literal prefix of a LIKE pattern (up to its first wildcard).
std::string_view like_literal_prefix(std::string_view pattern);

// True when every condition holds; `lookup(const Field&)` returns the item's FieldValue.
template <class Lookup>
bool all_hold(const std::vector<Condition>& conditions, Lookup&& lookup) {
  for (const auto& condition : conditions) {
    if (!condition_holds(condition, lookup(condition.field))) return false;
  }
  return true;
}

SortValue sort_value(const FieldValue& value);

// <0, 0, >0 as item a sorts before, with, after item b under `order` (values in term order).
int compare_sort_values(const std::vector<OrderTerm>& order, const std::vector<SortValue>& a,
                        const std::vector<SortValue>& b);

template <class Lookup>
std::vector<SortValue> sort_values(const std::vector<OrderTerm>& order, Lookup&& lookup) {
  std::vector<SortValue> values;
  values.reserve(order.size());
  for (const auto& term : order) values.push_back(sort_value(lookup(term.field)));
  return values;
}

}  // namespace cairn::storage::detail

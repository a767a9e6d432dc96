#include "storage/detail/mlflow_filter.h"

#include <cmath>
#include <cstdlib>
#include <optional>

namespace cairn::storage::detail {
namespace {

constexpr std::string_view kComparators = "=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN";
constexpr size_t kShownTokenChars = 24;

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string lowered(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

bool is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// Chars of an unquoted key after "metrics." and the like: a word plus . - / : (keys may hold
// them); anything else (spaces included) needs backticks or double quotes.
bool is_key_char(char c) {
  return is_word_char(c) || c == '.' || c == '-' || c == '/' || c == ':';
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

std::optional<Entity> entity_named(std::string_view word) {
  const std::string name = lowered(word);
  if (name == "metric" || name == "metrics") return Entity::metric;
  if (name == "param" || name == "params" || name == "parameter" || name == "parameters") {
    return Entity::param;
  }
  if (name == "tag" || name == "tags") return Entity::tag;
  if (name == "attribute" || name == "attributes" || name == "attr" || name == "run") {
    return Entity::attribute;
  }
  return std::nullopt;
}

std::string_view entity_prefix(Entity entity) {
  switch (entity) {
    case Entity::metric: return "metrics.";
    case Entity::param: return "params.";
    case Entity::tag: return "tags.";
    case Entity::attribute: return "attributes.";
  }
  return "";
}

// Reads one filter or order_by text; every error names `context`, a 1-based position and the
// text found there.
class Scanner {
 public:
  Scanner(std::string_view text, std::string_view context) : text_(text), context_(context) {}

  void skip_spaces() {
    while (pos_ < text_.size() && is_space(text_[pos_])) ++pos_;
  }
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }
  size_t pos() const { return pos_; }
  size_t position() const { return pos_ + 1; }
  void advance(size_t n = 1) { pos_ += n; }
  bool starts_with(std::string_view token) const {
    return text_.substr(pos_, token.size()) == token;
  }

  std::string_view read_while(bool (*accept)(char)) {
    const size_t start = pos_;
    while (pos_ < text_.size() && accept(text_[pos_])) ++pos_;
    return text_.substr(start, pos_ - start);
  }

  // What is at `at` (0-based), for messages: a quoted token or "the end of the filter".
  std::string found_at(size_t at) const {
    if (at >= text_.size()) return "the end of the " + std::string(context_kind());
    size_t end = at;
    if (is_word_char(text_[at])) {
      while (end < text_.size() && is_word_char(text_[end])) ++end;
    } else {
      while (end < text_.size() && !is_space(text_[end]) && !is_word_char(text_[end]) &&
             end - at < 2) {
        ++end;
      }
    }
    std::string token(text_.substr(at, std::min(end - at, kShownTokenChars)));
    return "'" + token + "'";
  }

  Status error_at(size_t at, const std::string& what) const {
    return Status(Code::bad_request, std::string(context_) + ": " + what + " at position " +
                                         std::to_string(at + 1) + ", found " + found_at(at));
  }
  Status error_here(const std::string& what) const { return error_at(pos_, what); }
  // An error about a well-formed token: names it without "found".
  Status problem(size_t at, const std::string& what) const {
    return Status(Code::bad_request, std::string(context_) + ": " + what + " (position " +
                                         std::to_string(at + 1) + ")");
  }

  // A quoted string starting at the current quote char; a doubled quote stands for one.
  Result<std::string> read_quoted() {
    const char quote = peek();
    const size_t start = pos_;
    advance();
    std::string out;
    while (true) {
      if (at_end()) {
        return Status(Code::bad_request, std::string(context_) + ": unterminated " +
                                             (quote == '`' ? "backtick-quoted key" : "string") +
                                             " starting at position " + std::to_string(start + 1));
      }
      const char c = peek();
      advance();
      if (c == quote) {
        if (quote != '`' && peek() == quote) {
          out += quote;
          advance();
          continue;
        }
        return out;
      }
      out += c;
    }
  }

 private:
  std::string_view context_kind() const {
    return context_ == "filter" ? std::string_view("filter") : std::string_view("order_by");
  }

  std::string_view text_;
  std::string_view context_;
  size_t pos_ = 0;
};

struct Identifier {
  bool qualified = false;
  Entity entity = Entity::attribute;
  std::string key;
  size_t position = 0;  // 0-based
};

Result<Identifier> read_identifier(Scanner& in) {
  in.skip_spaces();
  Identifier id;
  id.position = in.pos();
  const std::string_view word = in.read_while(is_word_char);
  if (word.empty()) {
    return in.error_here(
        "expected an identifier such as metrics.loss, params.lr, tags.k or "
        "attributes.status");
  }
  if (in.peek() != '.') {
    id.key = std::string(word);
    return id;
  }
  auto entity = entity_named(word);
  if (!entity) {
    return in.problem(id.position, "unknown entity '" + std::string(word) +
                                       "'; expected metrics, params, tags or attributes");
  }
  in.advance();  // '.'
  id.qualified = true;
  id.entity = *entity;
  if (in.peek() == '`' || in.peek() == '"') {
    auto key = in.read_quoted();
    if (!key.ok()) return key.status();
    id.key = std::move(*key);
  } else {
    id.key = std::string(in.read_while(is_key_char));
  }
  if (id.key.empty()) {
    return in.error_here("expected a key after '" + std::string(word) +
                         ".' (quote keys with spaces in backticks: metrics.`my metric`)");
  }
  return id;
}

Result<Comparator> read_comparator(Scanner& in) {
  in.skip_spaces();
  const std::string expected = "expected a comparator (" + std::string(kComparators) + ")";
  if (in.starts_with("!=")) {
    in.advance(2);
    return Comparator::ne;
  }
  if (in.starts_with("<=")) {
    in.advance(2);
    return Comparator::le;
  }
  if (in.starts_with(">=")) {
    in.advance(2);
    return Comparator::ge;
  }
  if (in.starts_with("==") || in.starts_with("<>")) return in.error_here(expected);
  if (in.starts_with("<")) {
    in.advance();
    return Comparator::lt;
  }
  if (in.starts_with(">")) {
    in.advance();
    return Comparator::gt;
  }
  if (in.starts_with("=")) {
    in.advance();
    return Comparator::eq;
  }
  const size_t start = in.pos();
  const std::string word = lowered(in.read_while(is_word_char));
  if (word == "like") return Comparator::like;
  if (word == "ilike") return Comparator::ilike;
  if (word == "in") return Comparator::in;
  if (word == "not") {
    in.skip_spaces();
    const size_t second = in.pos();
    if (lowered(in.read_while(is_word_char)) == "in") return Comparator::not_in;
    return in.error_at(second, "expected IN after NOT (NOT IN is the only negated comparator)");
  }
  return in.error_at(start, expected);
}

Result<FilterValue> read_value(Scanner& in) {
  in.skip_spaces();
  FilterValue value;
  const char c = in.peek();
  if (c == '\'' || c == '"') {
    auto text = in.read_quoted();
    if (!text.ok()) return text.status();
    value.kind = FilterValue::Kind::text;
    value.text = std::move(*text);
    return value;
  }
  if (c == '(') {
    in.advance();
    value.kind = FilterValue::Kind::list;
    while (true) {
      in.skip_spaces();
      if (in.peek() != '\'' && in.peek() != '"') {
        return in.error_here("expected a quoted string in the list");
      }
      auto item = in.read_quoted();
      if (!item.ok()) return item.status();
      value.list.push_back(std::move(*item));
      in.skip_spaces();
      if (in.peek() == ',') {
        in.advance();
        continue;
      }
      if (in.peek() == ')') {
        in.advance();
        return value;
      }
      return in.error_here("expected ',' or ')' in the list");
    }
  }
  if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.') {
    const size_t start = in.pos();
    const std::string_view token = in.read_while([](char ch) {
      return (ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == '.' || ch == 'e' ||
             ch == 'E';
    });
    const std::string text(token);
    char* end = nullptr;
    const double number = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || is_word_char(in.peek())) {
      return in.error_at(start, "expected a number");
    }
    value.kind = FilterValue::Kind::number;
    value.number = number;
    return value;
  }
  return in.error_here(
      "expected a value: a number, a string in single or double quotes, or a list ('a', 'b')");
}

std::string field_name(const Field& field, const SearchDomain& domain) {
  if (field.entity == Entity::attribute) {
    for (const auto& spec : domain.attributes) {
      if (spec.id == field.attribute) {
        return domain.bare_attributes ? std::string(spec.name)
                                      : "attributes." + std::string(spec.name);
      }
    }
  }
  return std::string(entity_prefix(field.entity)) + field.key;
}

std::string attribute_names(const SearchDomain& domain) {
  std::string names;
  for (const auto& spec : domain.attributes) {
    if (!names.empty()) names += ", ";
    names += spec.name;
  }
  return names;
}

Result<Field> resolve(const SearchDomain& domain, bool qualified, Entity entity,
                      const std::string& key, const Scanner& in, size_t at) {
  Field field;
  field.entity = entity;
  field.key = key;
  if (!qualified && !domain.bare_attributes) {
    return in.problem(at, "'" + key + "' needs an entity prefix: metrics." + key + ", params." +
                              key + ", tags." + key + " or attributes." + key);
  }
  switch (entity) {
    case Entity::metric:
      if (!domain.metrics) return in.problem(at, std::string(domain.what) + " have no metrics");
      field.kind = ValueKind::number;
      return field;
    case Entity::param:
      if (!domain.params) return in.problem(at, std::string(domain.what) + " have no params");
      field.kind = ValueKind::text;
      return field;
    case Entity::tag:
      if (!domain.tags) return in.problem(at, std::string(domain.what) + " have no tags");
      field.kind = ValueKind::text;
      return field;
    case Entity::attribute:
      for (const auto& spec : domain.attributes) {
        if (spec.name == key) {
          field.attribute = spec.id;
          field.kind = spec.kind;
          return field;
        }
      }
      return in.problem(at, "unknown attribute '" + key + "'; " + std::string(domain.what) +
                                " offer " + attribute_names(domain));
  }
  return field;
}

bool numeric_comparator(Comparator op) {
  return op == Comparator::eq || op == Comparator::ne || op == Comparator::lt ||
         op == Comparator::le || op == Comparator::gt || op == Comparator::ge;
}

bool text_comparator(Comparator op) {
  return op == Comparator::eq || op == Comparator::ne || op == Comparator::like ||
         op == Comparator::ilike || op == Comparator::in || op == Comparator::not_in;
}

}  // namespace

std::string_view comparator_text(Comparator op) {
  switch (op) {
    case Comparator::eq: return "=";
    case Comparator::ne: return "!=";
    case Comparator::lt: return "<";
    case Comparator::le: return "<=";
    case Comparator::gt: return ">";
    case Comparator::ge: return ">=";
    case Comparator::like: return "LIKE";
    case Comparator::ilike: return "ILIKE";
    case Comparator::in: return "IN";
    case Comparator::not_in: return "NOT IN";
  }
  return "?";
}

Result<std::vector<Clause>> parse_filter(std::string_view filter) {
  Scanner in(filter, "filter");
  std::vector<Clause> clauses;
  in.skip_spaces();
  if (in.at_end()) return clauses;
  while (true) {
    auto id = read_identifier(in);
    if (!id.ok()) return id.status();
    auto op = read_comparator(in);
    if (!op.ok()) return op.status();
    in.skip_spaces();
    const size_t value_at = in.pos();
    auto value = read_value(in);
    if (!value.ok()) return value.status();
    Clause clause;
    clause.qualified = id->qualified;
    clause.entity = id->entity;
    clause.key = std::move(id->key);
    clause.op = *op;
    clause.value = std::move(*value);
    clause.position = id->position + 1;
    clause.value_position = value_at + 1;
    clauses.push_back(std::move(clause));

    in.skip_spaces();
    if (in.at_end()) return clauses;
    const size_t joiner_at = in.pos();
    const std::string joiner = lowered(in.read_while(is_word_char));
    if (joiner == "and") {
      in.skip_spaces();
      if (in.at_end()) return in.error_here("expected a clause after 'and'");
      continue;
    }
    if (joiner == "or") {
      return in.problem(joiner_at,
                        "'or' is not supported: MLflow's filter grammar joins "
                        "clauses with 'and' only");
    }
    return in.error_at(joiner_at, "expected 'and' or the end of the filter");
  }
}

Result<OrderClause> parse_order_by(std::string_view text, std::string_view field) {
  Scanner in(text, field);
  auto id = read_identifier(in);
  if (!id.ok()) return id.status();
  OrderClause clause;
  clause.qualified = id->qualified;
  clause.entity = id->entity;
  clause.key = std::move(id->key);
  in.skip_spaces();
  if (in.at_end()) return clause;
  const size_t at = in.pos();
  const std::string direction = lowered(in.read_while(is_word_char));
  if (direction == "asc" || direction == "desc") {
    clause.ascending = direction == "asc";
    in.skip_spaces();
    if (in.at_end()) return clause;
    return in.error_here("expected the end after " +
                         std::string(direction == "asc" ? "ASC" : "DESC"));
  }
  return in.error_at(at, "expected ASC, DESC or the end");
}

Result<std::vector<Condition>> bind_filter(const SearchDomain& domain, std::string_view filter) {
  auto clauses = parse_filter(filter);
  if (!clauses.ok()) return clauses.status();
  Scanner in(filter, "filter");
  std::vector<Condition> conditions;
  conditions.reserve(clauses->size());
  for (auto& clause : *clauses) {
    const size_t at = clause.position - 1;
    auto field = resolve(domain, clause.qualified, clause.entity, clause.key, in, at);
    if (!field.ok()) return field.status();
    const std::string name = field_name(*field, domain);
    const std::string op(comparator_text(clause.op));
    const size_t value_at = clause.value_position - 1;
    if (field->kind == ValueKind::number) {
      if (!numeric_comparator(clause.op)) {
        return in.problem(at, name + " is a number and does not support " + op +
                                  " (allowed: =, !=, <, <=, >, >=)");
      }
      if (clause.value.kind != FilterValue::Kind::number) {
        return in.problem(value_at, name + " is a number; the value must be an unquoted number");
      }
    } else {
      if (!text_comparator(clause.op)) {
        return in.problem(at, name + " is a string and does not support " + op +
                                  " (allowed: =, !=, LIKE, ILIKE, IN, NOT IN)");
      }
      const bool list_op = clause.op == Comparator::in || clause.op == Comparator::not_in;
      if (list_op && clause.value.kind != FilterValue::Kind::list) {
        return in.problem(value_at, op + " takes a parenthesized list of quoted strings, e.g. "
                                         "('a', 'b')");
      }
      if (!list_op && clause.value.kind == FilterValue::Kind::list) {
        return in.problem(value_at, "a list needs IN or NOT IN, not " + op);
      }
      if (!list_op && clause.value.kind != FilterValue::Kind::text) {
        return in.problem(value_at, name +
                                        " is a string; quote the value in single or double "
                                        "quotes");
      }
    }
    Condition condition;
    condition.field = std::move(*field);
    condition.op = clause.op;
    condition.value = std::move(clause.value);
    conditions.push_back(std::move(condition));
  }
  return conditions;
}

Result<std::vector<OrderTerm>> bind_order_by(const SearchDomain& domain,
                                             const std::vector<std::string>& order_by) {
  std::vector<OrderTerm> terms;
  for (size_t i = 0; i < order_by.size(); ++i) {
    const std::string field_label = "order_by[" + std::to_string(i) + "]";
    auto clause = parse_order_by(order_by[i], field_label);
    if (!clause.ok()) return clause.status();
    Scanner in(order_by[i], field_label);
    auto field = resolve(domain, clause->qualified, clause->entity, clause->key, in, 0);
    if (!field.ok()) return field.status();
    terms.push_back({std::move(*field), clause->ascending});
  }
  return terms;
}

bool like_match(std::string_view text, std::string_view pattern, bool ignore_case) {
  auto same = [ignore_case](char a, char b) {
    return ignore_case ? ascii_lower(a) == ascii_lower(b) : a == b;
  };
  size_t t = 0, p = 0;
  size_t star = std::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '%') {
      star = p++;
      resume = t;
    } else if (p < pattern.size() && (pattern[p] == '_' || same(pattern[p], text[t]))) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '%') ++p;
  return p == pattern.size();
}

std::string_view like_literal_prefix(std::string_view pattern) {
  const size_t wildcard = pattern.find_first_of("%_");
  return pattern.substr(0, wildcard);
}

bool condition_holds(const Condition& condition, const FieldValue& value) {
  using State = FieldValue::State;
  if (value.state == State::missing) return false;
  if (value.state == State::number) {
    if (condition.value.kind != FilterValue::Kind::number) return false;
    const double a = value.number;
    const double b = condition.value.number;
    switch (condition.op) {
      case Comparator::eq: return a == b;
      case Comparator::ne: return a != b;
      case Comparator::lt: return a < b;
      case Comparator::le: return a <= b;
      case Comparator::gt: return a > b;
      case Comparator::ge: return a >= b;
      default: return false;
    }
  }
  const std::string_view text = value.text;
  switch (condition.op) {
    case Comparator::eq: return text == condition.value.text;
    case Comparator::ne: return text != condition.value.text;
    case Comparator::like: return like_match(text, condition.value.text, false);
    case Comparator::ilike: return like_match(text, condition.value.text, true);
    case Comparator::in:
    case Comparator::not_in: {
      bool found = false;
      for (const auto& item : condition.value.list) found = found || item == text;
      return condition.op == Comparator::in ? found : !found;
    }
    default: return false;
  }
}

SortValue sort_value(const FieldValue& value) {
  SortValue out;
  switch (value.state) {
    case FieldValue::State::missing: out.rank = 2; break;
    case FieldValue::State::number:
      if (std::isnan(value.number)) {
        out.rank = 1;
      } else {
        out.number = value.number;
      }
      break;
    case FieldValue::State::text: out.text = std::string(value.text); break;
  }
  return out;
}

int compare_sort_values(const std::vector<OrderTerm>& order, const std::vector<SortValue>& a,
                        const std::vector<SortValue>& b) {
  const size_t n = std::min({order.size(), a.size(), b.size()});
  for (size_t i = 0; i < n; ++i) {
    const SortValue& x = a[i];
    const SortValue& y = b[i];
    if (x.rank != y.rank) return x.rank < y.rank ? -1 : 1;
    if (x.rank != 0) continue;
    int cmp = 0;
    if (order[i].field.kind == ValueKind::number) {
      cmp = x.number < y.number ? -1 : (y.number < x.number ? 1 : 0);
    } else {
      const int c = x.text.compare(y.text);
      cmp = c < 0 ? -1 : (c > 0 ? 1 : 0);
    }
    if (cmp != 0) return order[i].ascending ? cmp : -cmp;
  }
  return 0;
}

}  // namespace cairn::storage::detail

// MLflow's filter and order_by grammar (storage/detail/mlflow_filter.h): parsing, binding to a
// domain, error messages with positions, LIKE matching and sort-value ordering. The store-level
// behaviour of filters (which runs match) is in registry_store_test.cc.
#include "storage/detail/mlflow_filter.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "storage/detail/registry_codec.h"

namespace cairn::storage::detail {
namespace {

SearchDomain runs_like() {
  return SearchDomain{"runs",
                      {{"status", 0, ValueKind::text}, {"start_time", 1, ValueKind::number}},
                      /*metrics=*/true,
                      /*params=*/true,
                      /*tags=*/true,
                      /*bare_attributes=*/false};
}

SearchDomain models_like() {
  return SearchDomain{"registered models",     {{"name", 0, ValueKind::text}},
                      /*metrics=*/false,
                      /*params=*/false,
                      /*tags=*/true,
                      /*bare_attributes=*/true};
}

// The message of a failed bind, or "" (and a test failure) when it succeeded.
std::string filter_error(const SearchDomain& domain, std::string_view filter) {
  auto bound = bind_filter(domain, filter);
  EXPECT_FALSE(bound.ok()) << "filter accepted: " << filter;
  if (bound.ok()) return "";
  EXPECT_EQ(bound.status().code(), Code::bad_request);
  return bound.status().message();
}

TEST(MlflowFilterTest, ParsesClausesJoinedByAnd) {
  auto clauses = parse_filter(
      "metrics.loss < 2 and params.lr = '3e-4' AND tags.`my tag` != \"x\" and "
      "attributes.status IN ('A', 'B') and tags.k NOT IN ('c') and params.\"a b\" ILIKE 'x%'");
  ASSERT_TRUE(clauses.ok()) << clauses.status().to_string();
  ASSERT_EQ(clauses->size(), 6u);
  const auto& c = *clauses;
  EXPECT_EQ(c[0].entity, Entity::metric);
  EXPECT_EQ(c[0].key, "loss");
  EXPECT_EQ(c[0].op, Comparator::lt);
  EXPECT_EQ(c[0].value.kind, FilterValue::Kind::number);
  EXPECT_EQ(c[0].value.number, 2);
  EXPECT_EQ(c[0].position, 1u);
  EXPECT_EQ(c[1].entity, Entity::param);
  EXPECT_EQ(c[1].value.text, "3e-4");
  EXPECT_EQ(c[2].entity, Entity::tag);
  EXPECT_EQ(c[2].key, "my tag");
  EXPECT_EQ(c[2].op, Comparator::ne);
  EXPECT_EQ(c[2].value.text, "x");
  EXPECT_EQ(c[3].entity, Entity::attribute);
  EXPECT_EQ(c[3].op, Comparator::in);
  EXPECT_EQ(c[3].value.list, (std::vector<std::string>{"A", "B"}));
  EXPECT_EQ(c[4].op, Comparator::not_in);
  EXPECT_EQ(c[5].key, "a b");
  EXPECT_EQ(c[5].op, Comparator::ilike);
}

TEST(MlflowFilterTest, AcceptsMlflowEntityAliasesAndNumberForms) {
  auto clauses = parse_filter(
      "metric.a >= -1.5e3 and parameter.b = 'x' and parameters.c = 'y' and param.d = 'z' and "
      "tag.e = 'w' and attr.status = 'v' and run.status = 'u' and metrics.f <= .5 and "
      "metrics.g > +3 and metrics.h = 1E-2 and params.i = 'it''s'");
  ASSERT_TRUE(clauses.ok()) << clauses.status().to_string();
  ASSERT_EQ(clauses->size(), 11u);
  EXPECT_EQ((*clauses)[0].value.number, -1500);
  EXPECT_EQ((*clauses)[1].entity, Entity::param);
  EXPECT_EQ((*clauses)[2].entity, Entity::param);
  EXPECT_EQ((*clauses)[4].entity, Entity::tag);
  EXPECT_EQ((*clauses)[5].entity, Entity::attribute);
  EXPECT_EQ((*clauses)[6].entity, Entity::attribute);
  EXPECT_EQ((*clauses)[7].value.number, 0.5);
  EXPECT_EQ((*clauses)[8].value.number, 3);
  EXPECT_EQ((*clauses)[9].value.number, 0.01);
  EXPECT_EQ((*clauses)[10].value.text, "it's");
}

TEST(MlflowFilterTest, UnquotedKeysMayHoldDotsDashesSlashesAndColons) {
  auto clauses = parse_filter("metrics.eval/loss-v2.x:y < 1");
  ASSERT_TRUE(clauses.ok()) << clauses.status().to_string();
  EXPECT_EQ((*clauses)[0].key, "eval/loss-v2.x:y");
}

TEST(MlflowFilterTest, EmptyAndBlankFiltersHaveNoClauses) {
  EXPECT_TRUE(parse_filter("")->empty());
  EXPECT_TRUE(parse_filter("   \t")->empty());
}

TEST(MlflowFilterTest, SyntaxErrorsNamePositionAndToken) {
  const SearchDomain domain = runs_like();
  std::string message = filter_error(domain, "metrics.loss < 1 or metrics.loss > 2");
  EXPECT_NE(message.find("'or' is not supported"), std::string::npos) << message;
  EXPECT_NE(message.find("position 18"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss");
  EXPECT_NE(message.find("expected a comparator"), std::string::npos) << message;
  EXPECT_NE(message.find("the end of the filter"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss == 1");
  EXPECT_NE(message.find("expected a comparator"), std::string::npos) << message;
  EXPECT_NE(message.find("position 14"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss <");
  EXPECT_NE(message.find("expected a value"), std::string::npos) << message;

  message = filter_error(domain, "params.lr = 'abc");
  EXPECT_NE(message.find("unterminated string starting at position 13"), std::string::npos)
      << message;

  message = filter_error(domain, "foo.bar = 'x'");
  EXPECT_NE(message.find("unknown entity 'foo'"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss < 1 and");
  EXPECT_NE(message.find("expected a clause after 'and'"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss < 1 metrics.x > 2");
  EXPECT_NE(message.find("expected 'and' or the end of the filter at position 18, found 'metrics'"),
            std::string::npos)
      << message;

  message = filter_error(domain, "metrics. < 1");
  EXPECT_NE(message.find("expected a key after 'metrics.'"), std::string::npos) << message;

  message = filter_error(domain, "tags.a IN ('x', 2)");
  EXPECT_NE(message.find("expected a quoted string in the list"), std::string::npos) << message;

  message = filter_error(domain, "tags.a NOT LIKE 'x'");
  EXPECT_NE(message.find("expected IN after NOT"), std::string::npos) << message;

  message = filter_error(domain, "metrics.loss < 1x");
  EXPECT_NE(message.find("expected a number"), std::string::npos) << message;

  message = filter_error(domain, "attributes.status = FINISHED");
  EXPECT_NE(message.find("expected a value"), std::string::npos) << message;
  EXPECT_EQ(message.rfind("filter: ", 0), 0u) << message;
}

TEST(MlflowFilterTest, BindingChecksEntitiesComparatorsAndValueTypes) {
  const SearchDomain runs = runs_like();
  std::string message = filter_error(runs, "metrics.loss < 'a'");
  EXPECT_NE(message.find("metrics.loss is a number"), std::string::npos) << message;
  message = filter_error(runs, "metrics.loss LIKE '1%'");
  EXPECT_NE(message.find("does not support LIKE"), std::string::npos) << message;
  message = filter_error(runs, "params.lr < '1'");
  EXPECT_NE(message.find("params.lr is a string and does not support <"), std::string::npos)
      << message;
  message = filter_error(runs, "params.lr = 3");
  EXPECT_NE(message.find("quote the value"), std::string::npos) << message;
  message = filter_error(runs, "tags.a IN 'x'");
  EXPECT_NE(message.find("takes a parenthesized list"), std::string::npos) << message;
  message = filter_error(runs, "tags.a = ('x')");
  EXPECT_NE(message.find("a list needs IN or NOT IN"), std::string::npos) << message;
  message = filter_error(runs, "attributes.nope = 'x'");
  EXPECT_NE(message.find("unknown attribute 'nope'"), std::string::npos) << message;
  EXPECT_NE(message.find("status, start_time"), std::string::npos) << message;
  message = filter_error(runs, "status = 'x'");
  EXPECT_NE(message.find("needs an entity prefix"), std::string::npos) << message;
  message = filter_error(runs, "attributes.start_time = '5'");
  EXPECT_NE(message.find("is a number"), std::string::npos) << message;

  const SearchDomain models = models_like();
  auto bound = bind_filter(models, "name LIKE 'llama%' and tags.family = 'x'");
  ASSERT_TRUE(bound.ok()) << bound.status().to_string();
  EXPECT_EQ((*bound)[0].field.entity, Entity::attribute);
  EXPECT_EQ((*bound)[0].field.attribute, 0);
  message = filter_error(models, "metrics.loss < 1");
  EXPECT_NE(message.find("registered models have no metrics"), std::string::npos) << message;
}

TEST(MlflowFilterTest, OrderByParsesDirectionAndRejectsJunk) {
  const SearchDomain runs = runs_like();
  auto order = bind_order_by(
      runs, {"metrics.loss", "params.`learning rate` DESC", "attributes.start_time asc"});
  ASSERT_TRUE(order.ok()) << order.status().to_string();
  ASSERT_EQ(order->size(), 3u);
  EXPECT_TRUE((*order)[0].ascending);
  EXPECT_EQ((*order)[1].field.key, "learning rate");
  EXPECT_FALSE((*order)[1].ascending);
  EXPECT_TRUE((*order)[2].ascending);
  EXPECT_EQ((*order)[2].field.attribute, 1);

  auto bad = bind_order_by(runs, {"metrics.loss", "metrics.loss UP"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "order_by[1]: expected ASC, DESC or the end at position 14, found 'UP'");
  bad = bind_order_by(runs, {"metrics.loss ASC DESC"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("expected the end after ASC"), std::string::npos);
}

TEST(MlflowFilterTest, LikeMatchesPercentAndUnderscore) {
  EXPECT_TRUE(like_match("alpha-1", "alpha%", false));
  EXPECT_TRUE(like_match("alpha-1", "%-_", false));
  EXPECT_TRUE(like_match("alpha", "%", false));
  EXPECT_TRUE(like_match("", "%", false));
  EXPECT_TRUE(like_match("abcabc", "%abc", false));
  EXPECT_TRUE(like_match("a.b.c", "a%c", false));
  EXPECT_FALSE(like_match("Alpha", "alpha%", false));
  EXPECT_TRUE(like_match("Alpha", "alpha%", true));
  EXPECT_FALSE(like_match("alpha", "alph", false));
  EXPECT_FALSE(like_match("alpha", "alpha_", false));
  EXPECT_EQ(like_literal_prefix("llama%7b"), "llama");
  EXPECT_EQ(like_literal_prefix("a_c"), "a");
  EXPECT_EQ(like_literal_prefix("exact"), "exact");
}

TEST(MlflowFilterTest, MissingValuesMatchNothingAndNanComparesLikeIeee) {
  auto bound = bind_filter(runs_like(), "metrics.loss != 1 and tags.t NOT IN ('a')");
  ASSERT_TRUE(bound.ok());
  EXPECT_FALSE(condition_holds((*bound)[0], FieldValue::missing()));
  EXPECT_FALSE(condition_holds((*bound)[1], FieldValue::missing()));
  EXPECT_TRUE(condition_holds((*bound)[0], FieldValue::of(std::nan(""))));
  EXPECT_FALSE(condition_holds((*bound)[0], FieldValue::of(1.0)));
  EXPECT_TRUE(condition_holds((*bound)[1], FieldValue::of(std::string_view("b"))));
  EXPECT_FALSE(condition_holds((*bound)[1], FieldValue::of(std::string_view("a"))));
}

TEST(MlflowFilterTest, SortValuesPutNanThenMissingLastInBothDirections) {
  for (bool ascending : {true, false}) {
    std::vector<OrderTerm> order{{Field{Entity::metric, -1, "loss", ValueKind::number}, ascending}};
    const std::vector<SortValue> low{sort_value(FieldValue::of(1.0))};
    const std::vector<SortValue> high{sort_value(FieldValue::of(2.0))};
    const std::vector<SortValue> nan{sort_value(FieldValue::of(std::nan("")))};
    const std::vector<SortValue> missing{sort_value(FieldValue::missing())};
    EXPECT_EQ(compare_sort_values(order, low, high), ascending ? -1 : 1);
    EXPECT_LT(compare_sort_values(order, high, nan), 0);
    EXPECT_LT(compare_sort_values(order, low, nan), 0);
    EXPECT_LT(compare_sort_values(order, nan, missing), 0);
    EXPECT_EQ(compare_sort_values(order, missing, missing), 0);
  }
}

TEST(RegistryCodecTest, OrderedIntegersSortLikeNumbers) {
  const std::vector<int64_t> values{std::numeric_limits<int64_t>::min(), -5, -1, 0, 1, 7,
                                    std::numeric_limits<int64_t>::max()};
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    EXPECT_LT(ordered_i64(values[i]), ordered_i64(values[i + 1]));
    EXPECT_EQ(decode_ordered_i64(ordered_i64(values[i])), values[i]);
  }
  EXPECT_GT(inverted_u64(1), inverted_u64(2));
  EXPECT_EQ(decode_inverted_u64(inverted_u64(42)), 42u);
}

TEST(RegistryCodecTest, Base64UrlRoundTripsAndRejectsJunk) {
  for (const std::string& text :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    EXPECT_EQ(from_base64url(base64url(text)), text);
  }
  EXPECT_FALSE(from_base64url("a").has_value());
  EXPECT_FALSE(from_base64url("ab+c").has_value());
  EXPECT_EQ(parse_decimal("0"), 0u);
  EXPECT_EQ(parse_decimal("42"), 42u);
  EXPECT_FALSE(parse_decimal("042").has_value());
  EXPECT_FALSE(parse_decimal("-1").has_value());
  EXPECT_FALSE(parse_decimal("99999999999999999999").has_value());
}

TEST(RegistryCodecTest, PageTokensAreTiedToTheirQuery) {
  PageToken token;
  token.query = 7;
  token.key.data = std::string("\0k", 2);
  token.values.push_back(SortValue{0, 1.5, "x"});
  const std::string text = encode_page_token(token);
  auto back = decode_page_token(text, 7);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->key.data, token.key.data);
  EXPECT_EQ(back->values.size(), 1u);
  auto other = decode_page_token(text, 8);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("different query"), std::string::npos);
  auto junk = decode_page_token("!!", 7);
  ASSERT_FALSE(junk.ok());
  EXPECT_EQ(junk.status().code(), Code::bad_request);
  EXPECT_FALSE(decode_page_token("AAAA", 7).ok());
}

}  // namespace
}  // namespace cairn::storage::detail

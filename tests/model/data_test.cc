// Tests of model/data.h (formats, masking, length policy, bad lines, split, packing, shuffle,
// sharding, cursor) and model/chat_template.h (the Jinja subset on real chat templates).
#include "model/data.h"

#include <gtest/gtest.h>
#include <cstdlib>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/chat_template.h"
#include "model/detail/data_jinja.h"
#include "model/tokenizer.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;

const std::string kFixtureTokenizer = std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama/tokenizer.json";
const std::string kData = std::string(CAIRN_SOURCE_DIR) + "/tests/model/data/";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "cairn-data-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const Tokenizer& fixture_tokenizer() {
  static const Tokenizer tokenizer = [] {
    Result<Tokenizer> t = Tokenizer::load(kFixtureTokenizer);
    if (!t.ok()) throw std::runtime_error(t.status().to_string());
    return std::move(t).value();
  }();
  return tokenizer;
}

// The fixture tokenizer with the special tokens of the chat templates added, and bos "<s>", eos
// "</s>" in its tokenizer_config.json. Written once into a directory that outlives the tests.
const std::string& chat_tokenizer_dir() {
  static const TempDir temp;
  static const std::string dir = [] {
    const std::string& path = temp.path();
    nlohmann::json tok = nlohmann::json::parse(read_text(kFixtureTokenizer));
    int id = 300;
    for (const char* content : {"<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                                "<|eot_id|>", "<|user|>", "<|assistant|>", "<|system|>"}) {
      tok["added_tokens"].push_back({{"id", id++},
                                     {"content", content},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}});
    }
    write_text(path + "/tokenizer.json", tok.dump());
    write_text(path + "/tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>"})");
    return path;
  }();
  return dir;
}

const Tokenizer& chat_tokenizer() {
  static const Tokenizer tokenizer = [] {
    Result<Tokenizer> t = Tokenizer::load(chat_tokenizer_dir());
    if (!t.ok()) throw std::runtime_error(t.status().to_string());
    return std::move(t).value();
  }();
  return tokenizer;
}

TokenizedDataset load_ok(const std::vector<DatasetSpec>& specs, const DataOptions& options,
                         const Tokenizer& tokenizer = fixture_tokenizer()) {
  Result<TokenizedDataset> ds = load_datasets(specs, tokenizer, options);
  EXPECT_TRUE(ds.ok()) << ds.status().to_string();
  if (!ds.ok()) throw std::runtime_error(ds.status().to_string());
  return std::move(ds).value();
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The decoded maximal runs of trained positions of a document.
std::vector<std::string> trained_runs(const Document& doc, const Tokenizer& tokenizer) {
  std::vector<std::string> runs;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= doc.labels.size(); ++i) {
    if (i < doc.labels.size() && doc.labels[i] != kIgnoreLabel) {
      EXPECT_EQ(doc.labels[i], doc.input_ids[i]);
      run.push_back(doc.labels[i]);
    } else if (!run.empty()) {
      runs.push_back(tokenizer.decode(run));
      run.clear();
    }
  }
  return runs;
}

std::vector<PackedRow> drain(BatchStream& stream) {
  std::vector<PackedRow> rows;
  while (std::optional<PackedRow> row = stream.next()) rows.push_back(std::move(*row));
  return rows;
}

BatchStream make_stream(const TokenizedDataset& ds, const StreamOptions& options, const DataCursor* resume = nullptr,
                        DataSplit split = DataSplit::train) {
  Result<BatchStream> stream = BatchStream::create(ds, split, options, resume);
  EXPECT_TRUE(stream.ok()) << stream.status().to_string();
  if (!stream.ok()) throw std::runtime_error(stream.status().to_string());
  return std::move(stream).value();
}

bool same_row(const PackedRow& a, const PackedRow& b) {
  return a.input_ids == b.input_ids && a.labels == b.labels && a.position_ids == b.position_ids &&
         a.doc_lens == b.doc_lens && a.epoch == b.epoch && a.index == b.index;
}

// ---------------------------------------------------------------------------------------------
// Formats

TEST(DataFormats, CompletionAddsBosAndEosAndTrainsEverythingButTheFirstToken) {
  const Tokenizer& tok = fixture_tokenizer();
  ASSERT_TRUE(tok.bos_id() && tok.eos_id());
  TokenizedDataset ds = load_ok({{kData + "data_completion.jsonl", "completion"}}, DataOptions{});
  EXPECT_EQ(ds.report.lines, 10);  // the blank line is not counted
  EXPECT_EQ(ds.report.examples, 10);
  EXPECT_EQ(ds.report.skipped_total(), 0);
  ASSERT_EQ(ds.train->size(), 10u);
  EXPECT_TRUE(ds.val->empty());
  const Document& doc = (*ds.train)[0];
  std::vector<int32_t> expected =
      concat(concat({*tok.bos_id()}, tok.encode("The quick brown fox jumps over the lazy dog.")), {*tok.eos_id()});
  EXPECT_EQ(doc.input_ids, expected);
  std::vector<int32_t> labels = expected;
  labels[0] = kIgnoreLabel;
  EXPECT_EQ(doc.labels, labels);
  EXPECT_EQ(doc.dataset, 0);
  EXPECT_EQ(doc.line, 1);
  EXPECT_EQ((*ds.train)[2].line, 4);  // after the blank line 3
  EXPECT_EQ(ds.pad_id, *tok.eos_id());
}

TEST(DataFormats, AlpacaMasksThePromptUnlessTrainOnInputs) {
  const Tokenizer& tok = fixture_tokenizer();
  DataOptions options;
  TokenizedDataset masked = load_ok({{kData + "data_alpaca.jsonl", "alpaca"}}, options);
  options.train_on_inputs = true;
  TokenizedDataset trained = load_ok({{kData + "data_alpaca.jsonl", "alpaca"}}, options);
  ASSERT_EQ(masked.train->size(), 3u);
  ASSERT_EQ(trained.train->size(), 3u);

  const std::string with_input =
      "Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
      "### Input:\n2 and 3\n\n### Response:\n";
  const std::string without_input =
      "Below is an instruction that describes a task. Write a response that appropriately completes the "
      "request.\n\n### Instruction:\nName a primary colour.\n\n### Response:\n";
  std::vector<int32_t> prompt0 = concat({*tok.bos_id()}, tok.encode(with_input));
  std::vector<int32_t> answer0 = concat(tok.encode("5"), {*tok.eos_id()});
  const Document& d0 = (*masked.train)[0];
  EXPECT_EQ(d0.input_ids, concat(prompt0, answer0));
  for (size_t i = 0; i < d0.labels.size(); ++i) {
    EXPECT_EQ(d0.labels[i], i < prompt0.size() ? kIgnoreLabel : d0.input_ids[i]) << i;
  }
  EXPECT_EQ(trained_runs(d0, tok), std::vector<std::string>{"5" + tok.decode({*tok.eos_id()})});

  const Document& d1 = (*masked.train)[1];  // "input": "" is the no-input prompt
  EXPECT_EQ(d1.input_ids, concat(concat({*tok.bos_id()}, tok.encode(without_input)),
                                 concat(tok.encode("Red"), {*tok.eos_id()})));
  // "input" may be absent.
  EXPECT_EQ(tok.decode((*masked.train)[2].input_ids).find("### Input"), std::string::npos);

  for (size_t i = 0; i < 3; ++i) {
    const Document& m = (*masked.train)[i];
    const Document& t = (*trained.train)[i];
    EXPECT_EQ(m.input_ids, t.input_ids);  // the flag changes labels only
    std::vector<int32_t> labels = t.input_ids;
    labels[0] = kIgnoreLabel;
    EXPECT_EQ(t.labels, labels);
  }
  EXPECT_NE(masked.digest, trained.digest);
}

TEST(DataFormats, ChatTemplateDefaultsToChatMlAndTrainsOnlyAssistantTurns) {
  const Tokenizer& tok = chat_tokenizer();
  ASSERT_EQ(tok.bos_id(), tok.token_to_id("<s>"));
  TokenizedDataset ds = load_ok({{kData + "data_chat.jsonl", "chat_template"}}, DataOptions{}, tok);
  ASSERT_EQ(ds.train->size(), 2u);
  const Document& doc = (*ds.train)[0];
  EXPECT_EQ(tok.decode(doc.input_ids),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\nGoodbye<|im_end|>\n");
  EXPECT_EQ(trained_runs(doc, tok), (std::vector<std::string>{"Hello<|im_end|>", "Goodbye<|im_end|>"}));
  EXPECT_EQ(trained_runs((*ds.train)[1], tok), std::vector<std::string>{"4<|im_end|>"});
  // The special tokens are single tokens.
  EXPECT_EQ(doc.input_ids[0], *tok.token_to_id("<|im_start|>"));

  DataOptions options;
  options.train_on_inputs = true;
  TokenizedDataset all = load_ok({{kData + "data_chat.jsonl", "chat_template"}}, options, tok);
  EXPECT_EQ((*all.train)[0].input_ids, doc.input_ids);
  EXPECT_EQ(trained_runs((*all.train)[0], tok).size(), 1u);
}

struct TemplateCase {
  const char* file;
  const char* rendered;  // of data_chat.jsonl's second conversation
  std::vector<std::string> trained;
};

TEST(DataFormats, ChatTemplateLlama3MistralZephyr) {
  const Tokenizer& tok = chat_tokenizer();
  const std::vector<TemplateCase> cases = {
      {"data_chat_llama3.jinja",
       "<s><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
       {"4<|eot_id|>"}},
      {"data_chat_mistral.jinja", "<s>[INST] What is 2+2? [/INST]4</s>", {"4</s>"}},
      {"data_chat_zephyr.jinja", "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n4</s>\n", {"4</s>"}},
  };
  for (const TemplateCase& c : cases) {
    SCOPED_TRACE(c.file);
    DataOptions options;
    options.chat_template = read_text(kData + c.file);
    Result<TokenizedDataset> ds = load_datasets({{kData + "data_chat.jsonl", "chat_template"}}, tok, options);
    ASSERT_TRUE(ds.ok()) << ds.status().to_string();
    const Document& doc = ds->train->back();
    EXPECT_EQ(tok.decode(doc.input_ids), c.rendered);
    EXPECT_EQ(trained_runs(doc, tok), c.trained);
  }
}

TEST(DataFormats, ChatTemplateRendersMultiTurnConversations) {
  std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  ChatTemplateVars vars{"<s>", "</s>", true};
  auto render = [&](const char* file) {
    Result<ChatTemplate> t = ChatTemplate::parse(read_text(kData + file));
    EXPECT_TRUE(t.ok()) << t.status().to_string();
    Result<std::string> text = t->render(messages, vars);
    EXPECT_TRUE(text.ok()) << text.status().to_string();
    return text.ok() ? *text : text.status().to_string();
  };
  EXPECT_EQ(render("data_chat_llama3.jinja"),
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render("data_chat_zephyr.jinja"),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nBye</s>\n<|assistant|>\n");
  Result<ChatTemplate> chatml = ChatTemplate::parse(std::string(chatml_template()));
  ASSERT_TRUE(chatml.ok());
  EXPECT_EQ(*chatml->render(messages, vars),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
  // Mistral's template refuses a system message, naming where it raised.
  Result<ChatTemplate> mistral = ChatTemplate::parse(read_text(kData + "data_chat_mistral.jinja"));
  ASSERT_TRUE(mistral.ok());
  Result<std::string> refused = mistral->render(messages, vars);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("raised: Conversation roles must alternate"), std::string::npos)
      << refused.status().message();
  EXPECT_NE(refused.status().message().find("chat template: line 1, column"), std::string::npos);
  messages.erase(messages.begin());
  EXPECT_EQ(*mistral->render(messages, vars), "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");
}

// Two more published templates (Llama 2's and Gemma's, written from their tokenizer_config.json):
// slices, .strip(), `!= false`, set in if/else, and filters inside concatenation.
TEST(DataFormats, ChatTemplateLlama2AndGemmaRender) {
  const std::string llama2 =
      R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})";
  const std::string gemma =
      R"({{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %})";
  ChatTemplateVars vars{"<s>", "</s>", true};
  Result<ChatTemplate> t2 = ChatTemplate::parse(llama2);
  ASSERT_TRUE(t2.ok()) << t2.status().to_string();
  EXPECT_EQ(*t2->render({{"system", "Be brief."}, {"user", " Hi "}, {"assistant", "Hello"}, {"user", "Bye"}}, vars),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello </s><s>[INST] Bye [/INST]");
  Result<ChatTemplate> tg = ChatTemplate::parse(gemma);
  ASSERT_TRUE(tg.ok()) << tg.status().to_string();
  EXPECT_EQ(*tg->render({{"user", "Hi "}, {"assistant", "Hello"}, {"user", "Bye"}}, vars),
            "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_NE(tg->render({{"system", "x"}}, vars).status().message().find("raised: System role not supported"),
            std::string::npos);
}

TEST(DataFormats, ChatTemplateErrorsAreBadLines) {
  TempDir dir;
  write_text(dir.file("chat.jsonl"),
             R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})"
             "\n"
             R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})"
             "\n"
             R"({"messages": [{"role": "user", "content": "only a question"}]})"
             "\n"
             R"({"messages": [{"role": "user", "content": 3}]})"
             "\n"
             R"({"messages": "hi"})"
             "\n");
  DataOptions options;
  options.chat_template = read_text(kData + "data_chat_mistral.jinja");
  TokenizedDataset ds = load_ok({{dir.file("chat.jsonl"), "chat_template"}}, options, chat_tokenizer());
  EXPECT_EQ(ds.train->size(), 1u);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::template_error), 1);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::no_trained_tokens), 1);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::wrong_type), 2);
  ASSERT_EQ(ds.report.bad_lines.size(), 4u);
  EXPECT_EQ(ds.report.bad_lines[0].line, 1);
  EXPECT_NE(ds.report.bad_lines[0].message.find("chat.jsonl:1: template_error: chat template: line 1"), std::string::npos)
      << ds.report.bad_lines[0].message;
  EXPECT_NE(ds.report.bad_lines[2].message.find("\"messages[0].content\" must be a string, not a number"),
            std::string::npos)
      << ds.report.bad_lines[2].message;
}

TEST(DataFormats, UnknownTypeAndBadTemplateFailUpFront) {
  Result<TokenizedDataset> ds = load_datasets({{kData + "data_chat.jsonl", "sharegpt"}}, chat_tokenizer(), DataOptions{});
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), Code::invalid_argument);
  EXPECT_NE(ds.status().message().find("unknown dataset type \"sharegpt\""), std::string::npos);

  DataOptions options;
  options.chat_template = "{% for m in messages %}\n  {% macro x() %}{% endmacro %}{% endfor %}";
  ds = load_datasets({{kData + "data_chat.jsonl", "chat_template"}}, chat_tokenizer(), options);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().message(), "chat template: line 2, column 6: unsupported tag 'macro'");

  ds = load_datasets({{kData + "no-such-file.jsonl", "completion"}}, fixture_tokenizer(), DataOptions{});
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), Code::not_found);
}

TEST(ChatTemplateConfig, LoadsTheTemplateBesideTheTokenizerOrChatMl) {
  TempDir dir;
  Result<std::string> none = load_chat_template(dir.path());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, chatml_template());
  write_text(dir.file("tokenizer_config.json"), R"({"chat_template": "{{ bos_token }}x"})");
  EXPECT_EQ(*load_chat_template(dir.file("tokenizer.json")), "{{ bos_token }}x");
  write_text(dir.file("tokenizer_config.json"),
             R"({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]})");
  EXPECT_EQ(*load_chat_template(dir.path()), "d");
  write_text(dir.file("tokenizer_config.json"), R"({"chat_template": 5})");
  EXPECT_EQ(load_chat_template(dir.path()).status().code(), Code::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// The Jinja subset

std::string render_jinja(const std::string& source, const detail::jinja::Dict& globals = {}) {
  Result<detail::jinja::Template> t = detail::jinja::Template::parse(source);
  if (!t.ok()) return "PARSE: " + t.status().message();
  Result<std::string> out = t->render(globals);
  if (!out.ok()) return "RENDER: " + out.status().message();
  return *out;
}

TEST(Jinja, ExpressionsFiltersAndTests) {
  using detail::jinja::Value;
  detail::jinja::Dict g = {
      {"xs", Value::from(detail::jinja::List{Value::from("a"), Value::from("b"), Value::from("c")})},
      {"s", Value::from("  Hi There ")},
      {"n", Value::from(int64_t{7})},
      {"d", Value::from(detail::jinja::Dict{{"k", Value::from("v")}})},
  };
  EXPECT_EQ(render_jinja("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 'a' ~ 1 ~ none }}", g), "7 3 2 a1None");
  EXPECT_EQ(render_jinja("{{ s | trim }}|{{ s|trim|upper }}|{{ s | lower }}|{{ xs | length }}|{{ 'héllo'|length }}", g),
            "Hi There|HI THERE|  hi there |3|5");
  EXPECT_EQ(render_jinja("{{ 'x' + s | trim + 'y' }}", g), "xHi Therey");  // the filter binds tighter than +
  EXPECT_EQ(render_jinja("{{ xs[0] }}{{ xs[-1] }}{{ xs[1:] | join(',') }}{{ xs[::-1] | join }}{{ d.k }}{{ d['k'] }}", g),
            "acb,ccbavv");
  EXPECT_EQ(render_jinja("{{ 'b' in xs }} {{ 'z' not in xs }} {{ 'Hi' in s }} {{ 'k' in d }} {{ not n == 7 }}", g),
            "True True True True False");
  EXPECT_EQ(render_jinja("{{ n is defined }} {{ m is defined }} {{ m is not defined }} {{ none is none }} {{ n is odd }}", g),
            "True False True True True");
  EXPECT_EQ(render_jinja("{{ m | default('dflt') }} {{ (n > 3) and (n <= 7) }} {{ 0 or 'x' }} {{ 'y' if n == 7 else 'z' }}", g),
            "dflt True x y");
  EXPECT_EQ(render_jinja("{{ s.strip() }}|{{ s.strip().startswith('Hi') }}|{{ d.get('q', 'none') }}|{{ m }}|", g),
            "Hi There|True|none||");
  EXPECT_EQ(render_jinja("{{ xs }} {{ d }} {{ d | tojson }} {{ true }} {{ [1, 'a'] }}", g),
            "['a', 'b', 'c'] {'k': 'v'} {\"k\": \"v\"} True [1, 'a']");
}

TEST(Jinja, StatementsLoopsAndWhitespaceControl) {
  using detail::jinja::Value;
  detail::jinja::Dict g = {
      {"xs", Value::from(detail::jinja::List{Value::from("a"), Value::from("b"), Value::from("c")})},
  };
  EXPECT_EQ(render_jinja("{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ x }}{% if loop.first %}F{% elif loop.last %}L"
                         "{% else %}-{% endif %}{{ loop.length }}{{ loop.revindex0 }}|{% endfor %}",
                         g),
            "01aF32|12b-31|23cL30|");
  // set inside a loop stays inside; a namespace carries state out.
  EXPECT_EQ(render_jinja("{% set v = 1 %}{% set ns = namespace(c=0) %}{% for x in xs %}{% set v = 2 %}"
                         "{% set ns.c = ns.c + 1 %}{% endfor %}{{ v }}{{ ns.c }}",
                         g),
            "13");
  // {%- -%} strips all whitespace around; trim_blocks/lstrip_blocks strip a block's own line.
  EXPECT_EQ(render_jinja("a  \n  {%- if true -%}  \n b {%- endif %}\n{{- ' c ' -}}\n  d"), "ab c d");
  EXPECT_EQ(render_jinja("x\n  {% if true %}\n  y\n  {% endif %}\nz\n"), "x\n  y\nz");
  EXPECT_EQ(render_jinja("{# comment #}\n{{ 'q' }}{#- c -#}  r"), "qr");
  EXPECT_EQ(render_jinja("{% for c in 'hé' %}[{{ c }}]{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}"), "[h][é]012");
}

TEST(Jinja, ErrorsNameThePosition) {
  EXPECT_EQ(render_jinja("ab\n{% call foo() %}"), "PARSE: line 2, column 4: unsupported tag 'call'");
  EXPECT_EQ(render_jinja("{{ x | wordwrap }}"), "PARSE: line 1, column 8: unsupported filter 'wordwrap'");
  EXPECT_EQ(render_jinja("{% if true %}x"), "PARSE: line 1, column 4: missing 'endif'");
  EXPECT_EQ(render_jinja("{{ 1.5 }}"), "PARSE: line 1, column 4: floating-point numbers are not supported");
  EXPECT_EQ(render_jinja("{% for a, b in x %}{% endfor %}"), "PARSE: line 1, column 9: unsupported: unpacking several loop variables");
  EXPECT_EQ(render_jinja("{{ 'a' }\n"), "PARSE: line 1, column 9: unclosed tag: expected '}}'");
  EXPECT_EQ(render_jinja("{% for x in y %}{{ x }}"), "PARSE: line 1, column 4: missing 'endfor'");
  EXPECT_EQ(render_jinja("\n  {{ raise_exception('no ' ~ 'way') }}"), "RENDER: line 2, column 6: raised: no way");
  EXPECT_EQ(render_jinja("{{ m.role }}"), "RENDER: line 1, column 4: 'm' is undefined");
  EXPECT_EQ(render_jinja("{{ 'a' + 1 }}"), "RENDER: line 1, column 8: unsupported operand types for '+': string and integer");
}

// ---------------------------------------------------------------------------------------------
// Bad lines and the length policy

TEST(DataBadLines, ReportedWithFileAndLineAndCountedByReason) {
  DataOptions options;
  options.sequence_len = 64;
  const std::string path = kData + "data_bad.jsonl";
  TokenizedDataset ds = load_ok({{path, "completion"}}, options);
  EXPECT_EQ(ds.report.lines, 7);
  EXPECT_EQ(ds.report.examples, 2);
  EXPECT_EQ(ds.train->size(), 2u);
  EXPECT_EQ(ds.report.skipped_total(), 5);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::invalid_json), 2);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::missing_field), 1);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::wrong_type), 1);
  EXPECT_EQ(ds.report.skipped.at(BadLineReason::too_long), 1);
  ASSERT_EQ(ds.report.bad_lines.size(), 5u);
  std::vector<std::pair<int64_t, BadLineReason>> expected = {{2, BadLineReason::invalid_json},
                                                             {3, BadLineReason::missing_field},
                                                             {4, BadLineReason::wrong_type},
                                                             {5, BadLineReason::too_long},
                                                             {6, BadLineReason::invalid_json}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const BadLine& bad = ds.report.bad_lines[i];
    EXPECT_EQ(bad.file, path);
    EXPECT_EQ(bad.line, expected[i].first);
    EXPECT_EQ(bad.reason, expected[i].second);
    std::string prefix = path + ":" + std::to_string(bad.line) + ": " + std::string(bad_line_reason_name(bad.reason)) + ": ";
    EXPECT_EQ(bad.message.compare(0, prefix.size(), prefix), 0) << bad.message;
  }
  EXPECT_NE(ds.report.bad_lines[1].message.find("\"text\" is missing"), std::string::npos);
  EXPECT_NE(ds.report.bad_lines[2].message.find("\"text\" must be a string, not a number"), std::string::npos);
  EXPECT_NE(ds.report.bad_lines[3].message.find("more than sequence_len 64"), std::string::npos);
  EXPECT_NE(ds.report.bad_lines[4].message.find("must be a JSON object, not an array"), std::string::npos);

  options.bad_line_policy = BadLinePolicy::fail;
  Result<TokenizedDataset> failed = load_datasets({{path, "completion"}}, fixture_tokenizer(), options);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), Code::invalid_argument);
  EXPECT_EQ(failed.status().message().rfind(path + ":2: invalid_json: ", 0), 0u) << failed.status().message();
}

TEST(DataBadLines, LongExamplesAreTruncatedOrSplit) {
  const Tokenizer& tok = fixture_tokenizer();
  TempDir dir;
  std::string text = "The Devil's Dictionary defines a long text as one that goes on and on and on and on.";
  write_text(dir.file("long.jsonl"), nlohmann::json{{"text", text}}.dump() + "\n");
  std::vector<int32_t> full = concat(concat({*tok.bos_id()}, tok.encode(text)), {*tok.eos_id()});
  ASSERT_GT(full.size(), 20u);
  DataOptions options;
  options.sequence_len = 8;
  options.long_example_policy = LongExamplePolicy::truncate;
  TokenizedDataset truncated = load_ok({{dir.file("long.jsonl"), "completion"}}, options);
  ASSERT_EQ(truncated.train->size(), 1u);
  EXPECT_EQ((*truncated.train)[0].input_ids, std::vector<int32_t>(full.begin(), full.begin() + 8));
  EXPECT_EQ(truncated.report.truncated, 1);

  options.long_example_policy = LongExamplePolicy::split;
  TokenizedDataset split = load_ok({{dir.file("long.jsonl"), "completion"}}, options);
  EXPECT_EQ(split.report.split, 1);
  std::vector<int32_t> joined;
  for (const Document& doc : *split.train) {
    EXPECT_LE(doc.input_ids.size(), 8u);
    EXPECT_EQ(doc.labels[0], kIgnoreLabel);
    EXPECT_EQ(doc.line, 1);
    joined = concat(joined, doc.input_ids);
  }
  EXPECT_EQ(joined, full);
  EXPECT_EQ(split.train->size(), (full.size() + 7) / 8);
}

// ---------------------------------------------------------------------------------------------
// Validation split

// (dataset, line) of each document.
std::set<std::pair<int32_t, int64_t>> lines_of(const Documents& docs) {
  std::set<std::pair<int32_t, int64_t>> out;
  for (const Document& d : docs) out.insert({d.dataset, d.line});
  return out;
}

TEST(DataSplitTest, ByRatioDeterministicBySeedDisjointAndComplete) {
  std::vector<DatasetSpec> specs = {{kData + "data_completion.jsonl", "completion"}, {kData + "data_alpaca.jsonl", "alpaca"}};
  DataOptions options;
  options.val_set_size = 0.25;  // of 13 examples: ceil(3.25) = 4
  TokenizedDataset a = load_ok(specs, options);
  TokenizedDataset b = load_ok(specs, options);
  EXPECT_EQ(a.val->size(), 4u);
  EXPECT_EQ(a.train->size(), 9u);
  EXPECT_EQ(lines_of(*a.val), lines_of(*b.val));
  EXPECT_EQ(a.digest, b.digest);
  std::set<std::pair<int32_t, int64_t>> train = lines_of(*a.train), val = lines_of(*a.val), all = train;
  all.insert(val.begin(), val.end());
  EXPECT_EQ(all.size(), 13u);  // disjoint and complete
  // Both keep file order.
  for (const Documents* docs : {a.train.get(), a.val.get()}) {
    for (size_t i = 1; i < docs->size(); ++i) {
      EXPECT_LT(std::make_pair((*docs)[i - 1].dataset, (*docs)[i - 1].line),
                std::make_pair((*docs)[i].dataset, (*docs)[i].line));
    }
  }
  // Another seed picks another set (for these seeds).
  bool differs = false;
  for (uint64_t seed : {1, 2, 3}) {
    options.seed = seed;
    differs = differs || lines_of(*load_ok(specs, options).val) != val;
  }
  EXPECT_TRUE(differs);
  options.val_set_size = 3;  // a count
  EXPECT_EQ(load_ok(specs, options).val->size(), 3u);
  options.val_set_size = 13;
  EXPECT_FALSE(load_datasets(specs, fixture_tokenizer(), options).ok());
  options.val_set_size = 1.5;
  EXPECT_EQ(load_datasets(specs, fixture_tokenizer(), options).status().code(), Code::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Streams: packing, shuffle, shards, cursor

// A dataset of many documents of varied lengths (completion lines of the devil corpus would do;
// these are generated so the test does not depend on the corpus).
TokenizedDataset varied_dataset(const TempDir& dir, int32_t sequence_len, int documents = 40) {
  std::string jsonl;
  for (int i = 0; i < documents; ++i) {
    std::string text = "doc " + std::to_string(i) + ":";
    for (int w = 0; w < (i * 7) % 13 + 1; ++w) text += " word" + std::to_string(w);
    jsonl += nlohmann::json{{"text", text}}.dump() + "\n";
  }
  write_text(dir.file("varied.jsonl"), jsonl);
  DataOptions options;
  options.sequence_len = sequence_len;
  options.long_example_policy = LongExamplePolicy::split;
  return load_ok({{dir.file("varied.jsonl"), "completion"}}, options);
}

// Checks the row invariants and returns the documents the rows hold, in row order.
std::vector<std::vector<int32_t>> documents_in(const std::vector<PackedRow>& rows, int32_t sequence_len, int32_t pad_id) {
  std::vector<std::vector<int32_t>> docs;
  for (const PackedRow& row : rows) {
    EXPECT_EQ(row.input_ids.size(), static_cast<size_t>(sequence_len));
    EXPECT_EQ(row.labels.size(), static_cast<size_t>(sequence_len));
    EXPECT_EQ(row.position_ids.size(), static_cast<size_t>(sequence_len));
    EXPECT_FALSE(row.doc_lens.empty());
    size_t at = 0;
    for (int32_t len : row.doc_lens) {
      EXPECT_GT(len, 0);
      EXPECT_EQ(row.labels[at], kIgnoreLabel);  // nothing predicts a document's first token
      for (int32_t p = 0; p < len; ++p) {
        EXPECT_EQ(row.position_ids[at + p], p);
        EXPECT_TRUE(row.labels[at + p] == kIgnoreLabel || row.labels[at + p] == row.input_ids[at + p]);
      }
      docs.emplace_back(row.input_ids.begin() + at, row.input_ids.begin() + at + len);
      at += len;
    }
    EXPECT_LE(at, static_cast<size_t>(sequence_len));
    for (size_t i = at; i < row.input_ids.size(); ++i) {
      EXPECT_EQ(row.input_ids[i], pad_id);
      EXPECT_EQ(row.labels[i], kIgnoreLabel);
      EXPECT_EQ(row.position_ids[i], static_cast<int32_t>(i - at));
    }
  }
  return docs;
}

std::multiset<std::vector<int32_t>> as_multiset(const std::vector<std::vector<int32_t>>& docs) {
  return {docs.begin(), docs.end()};
}

TEST(DataStream, PackingKeepsEveryDocumentOnceWithinRowsOfSequenceLen) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 96);
  std::vector<std::vector<int32_t>> all;
  for (const Document& d : *ds.train) all.push_back(d.input_ids);

  std::map<int32_t, size_t> rows_by_window;
  for (int32_t window : {1, 4}) {
    SCOPED_TRACE(window);
    StreamOptions options;
    options.sample_packing = true;
    options.packing_window = window;
    BatchStream stream = make_stream(ds, options);
    std::vector<PackedRow> rows = drain(stream);
    std::vector<std::vector<int32_t>> docs = documents_in(rows, ds.sequence_len, ds.pad_id);
    EXPECT_EQ(as_multiset(docs), as_multiset(all));
    EXPECT_LE(rows.size(), all.size() / 2);  // several documents per row
    rows_by_window[window] = rows.size();
    EXPECT_EQ(static_cast<int64_t>(rows.size()), stream.rows_in_epoch(0));
    for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i].index, static_cast<int64_t>(i));
  }
  EXPECT_LT(rows_by_window[4], rows_by_window[1]);  // a window fills rows better than next-fit

  // Without shuffling, next-fit keeps file order exactly.
  StreamOptions ordered;
  ordered.sample_packing = true;
  ordered.packing_window = 1;
  ordered.shuffle = false;
  BatchStream stream = make_stream(ds, ordered);
  EXPECT_EQ(documents_in(drain(stream), ds.sequence_len, ds.pad_id), all);
}

TEST(DataStream, WithoutPackingOneDocumentPerPaddedRow) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 48);
  StreamOptions options;
  options.shuffle = false;
  BatchStream stream = make_stream(ds, options);
  std::vector<PackedRow> rows = drain(stream);
  ASSERT_EQ(rows.size(), ds.train->size());
  std::vector<std::vector<int32_t>> docs = documents_in(rows, ds.sequence_len, ds.pad_id);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].doc_lens.size(), 1u);
    EXPECT_EQ(docs[i], (*ds.train)[i].input_ids);
    EXPECT_EQ(std::vector<int32_t>(rows[i].labels.begin(), rows[i].labels.begin() + rows[i].doc_lens[0]),
              (*ds.train)[i].labels);
  }
}

TEST(DataStream, ShuffleIsDeterministicBySeedAndDiffersByEpoch) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 48);
  StreamOptions options;
  options.num_epochs = 2;
  BatchStream a = make_stream(ds, options), b = make_stream(ds, options);
  std::vector<PackedRow> ra = drain(a), rb = drain(b);
  ASSERT_EQ(ra.size(), 2 * ds.train->size());
  for (size_t i = 0; i < ra.size(); ++i) EXPECT_TRUE(same_row(ra[i], rb[i])) << i;
  size_t n = ds.train->size();
  std::vector<std::vector<int32_t>> epoch0, epoch1;
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i].epoch, i < n ? 0 : 1);
    (i < n ? epoch0 : epoch1).emplace_back(ra[i].input_ids);
  }
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(as_multiset(epoch0), as_multiset(epoch1));
  options.seed = 7;
  BatchStream c = make_stream(ds, options);
  bool same_start = true;
  for (size_t i = 0; i < 3; ++i) same_start = same_start && c.next()->input_ids == ra[i].input_ids;
  EXPECT_FALSE(same_start);
}

TEST(DataStream, ShardsAreDisjointBalancedAndTogetherTheUnshardedStream) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 48, 61);
  StreamOptions options;
  options.sample_packing = true;
  options.num_epochs = 3;
  BatchStream whole = make_stream(ds, options);
  std::vector<PackedRow> all = drain(whole);
  const int32_t shards = 3;
  std::map<int64_t, PackedRow> by_index;
  std::vector<size_t> counts;
  for (int32_t k = 0; k < shards; ++k) {
    options.num_shards = shards;
    options.shard_index = k;
    BatchStream stream = make_stream(ds, options);
    std::vector<PackedRow> rows = drain(stream);
    counts.push_back(rows.size());
    for (const PackedRow& row : rows) {
      EXPECT_EQ(row.index % shards, k);
      EXPECT_TRUE(by_index.emplace(row.index, row).second) << "row " << row.index << " in two shards";
    }
  }
  ASSERT_EQ(by_index.size(), all.size());
  for (const PackedRow& row : all) EXPECT_TRUE(same_row(by_index.at(row.index), row)) << row.index;
  auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());
  EXPECT_LE(*hi - *lo, 1u);
  // N workers taking b rows per step see the rows of one worker taking N*b.
  EXPECT_EQ(all.size(), counts[0] + counts[1] + counts[2]);
}

TEST(DataStream, CursorResumesWithExactlyTheRowsOfAnUninterruptedRun) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 40, 50);
  for (int32_t shards : {1, 2}) {
    StreamOptions options;
    options.sample_packing = true;
    options.packing_window = 4;
    options.num_epochs = 3;
    options.num_shards = shards;
    options.shard_index = shards - 1;
    BatchStream reference = make_stream(ds, options);
    std::vector<PackedRow> expected = drain(reference);
    ASSERT_GT(expected.size(), 10u);
    for (size_t cut = 0; cut <= expected.size(); ++cut) {
      SCOPED_TRACE("shards " + std::to_string(shards) + " cut " + std::to_string(cut));
      BatchStream first = make_stream(ds, options);
      for (size_t i = 0; i < cut; ++i) ASSERT_TRUE(first.next().has_value());
      std::string saved = first.cursor().to_json();
      Result<DataCursor> cursor = DataCursor::from_json(saved);
      ASSERT_TRUE(cursor.ok()) << cursor.status().to_string();
      BatchStream second = make_stream(ds, options, &*cursor);
      std::vector<PackedRow> rest = drain(second);
      ASSERT_EQ(cut + rest.size(), expected.size());
      for (size_t i = 0; i < rest.size(); ++i) ASSERT_TRUE(same_row(rest[i], expected[cut + i])) << i;
    }
  }
}

TEST(DataStream, CursorsOpenRowsRoundTripAndForeignCursorsAreRefused) {
  TempDir dir;
  TokenizedDataset ds = varied_dataset(dir, 96, 50);
  StreamOptions options;
  options.sample_packing = true;
  options.packing_window = 4;
  BatchStream stream = make_stream(ds, options);
  ASSERT_TRUE(stream.next().has_value());
  DataCursor cursor = stream.cursor();
  EXPECT_FALSE(cursor.open_rows.empty());  // packing carries partly filled rows over
  Result<DataCursor> parsed = DataCursor::from_json(cursor.to_json());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->open_rows, cursor.open_rows);
  EXPECT_EQ(parsed->next_document, cursor.next_document);

  StreamOptions other = options;
  other.seed = 43;
  Result<BatchStream> refused = BatchStream::create(ds, DataSplit::train, other, &cursor);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("belongs to another dataset"), std::string::npos);
  other = options;
  other.num_shards = 2;
  EXPECT_FALSE(BatchStream::create(ds, DataSplit::train, other, &cursor).ok());
  other = options;
  other.num_epochs = 5;  // more epochs continue the same stream
  EXPECT_TRUE(BatchStream::create(ds, DataSplit::train, other, &cursor).ok());

  EXPECT_FALSE(DataCursor::from_json("[1]").ok());
  EXPECT_FALSE(DataCursor::from_json(R"({"version": 1, "epoch": "x"})").ok());
  cursor.open_rows.push_back({100000});
  EXPECT_FALSE(BatchStream::create(ds, DataSplit::train, options, &cursor).ok());
}

TEST(DataStream, ValidationSplitStreamsAndUnlimitedEpochs) {
  TempDir dir;
  (void)varied_dataset(dir, 48);  // writes varied.jsonl
  DataOptions options;
  options.sequence_len = 48;
  options.long_example_policy = LongExamplePolicy::split;
  options.val_set_size = 0.1;
  TokenizedDataset ds = load_ok({{dir.file("varied.jsonl"), "completion"}}, options);
  StreamOptions stream_options;
  stream_options.shuffle = false;
  BatchStream val = make_stream(ds, stream_options, nullptr, DataSplit::val);
  EXPECT_EQ(drain(val).size(), ds.val->size());
  stream_options.num_epochs = 0;
  BatchStream forever = make_stream(ds, stream_options);
  for (size_t i = 0; i < 5 * ds.train->size(); ++i) ASSERT_TRUE(forever.next().has_value());
  EXPECT_EQ(forever.cursor().epoch, 4);
  stream_options.shard_index = 1;
  EXPECT_EQ(BatchStream::create(ds, DataSplit::train, stream_options).status().code(), Code::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// The demo corpus

TEST(DevilCorpus, EntriesBecomeDocumentsAndACompletionDataset) {
  Result<std::vector<std::string>> docs = devil_corpus_documents();
  ASSERT_TRUE(docs.ok()) << docs.status().to_string();
  EXPECT_GT(docs->size(), 900u);
  EXPECT_EQ(docs->front().rfind("ABASEMENT, n.  A decent and customary mental attitude", 0), 0u) << docs->front();
  EXPECT_EQ(docs->back().rfind("ZOOLOGY, n.", 0), 0u);
  size_t bytes = 0;
  for (const std::string& d : *docs) {
    EXPECT_EQ(d.find("00-database"), std::string::npos);
    EXPECT_FALSE(d.empty());
    bytes += d.size();
  }
  EXPECT_GT(bytes, 300000u);

  TempDir dir;
  ASSERT_TRUE(write_completion_jsonl(*docs, dir.file("devil.jsonl")).ok());
  DataOptions options;
  options.sequence_len = 256;
  options.long_example_policy = LongExamplePolicy::split;
  options.val_set_size = 0.05;
  TokenizedDataset a = load_ok({{dir.file("devil.jsonl"), "completion"}}, options);
  EXPECT_EQ(a.report.examples, static_cast<int64_t>(docs->size()));
  EXPECT_EQ(a.report.skipped_total(), 0);
  EXPECT_GT(a.report.split, 0);
  // The same data and options give the same digest; the first document decodes to the entry.
  TokenizedDataset b = load_ok({{dir.file("devil.jsonl"), "completion"}}, options);
  EXPECT_EQ(a.digest, b.digest);
  EXPECT_EQ(a.digest.rfind("fnv1a64:", 0), 0u);
  options.sequence_len = 512;
  EXPECT_NE(load_ok({{dir.file("devil.jsonl"), "completion"}}, options).digest, a.digest);

  EXPECT_EQ(devil_corpus_documents("/nonexistent").status().code(), Code::not_found);
}

}  // namespace
}  // namespace cairn

// Tests of model/train_config.h: the examples in configs/train/, every class of error message
// (exact text, with key paths), warnings, synonyms, digests and the schedule.
#include "model/train_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/storage/test_dir.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using storage::testing::TestDir;

// A valid fine-tune config that the tests change one key at a time.
constexpr const char* kMinimal = R"(base_model: devil@latest
datasets:
  - path: data.jsonl
    type: completion
learning_rate: 2e-4
)";

TrainJobConfig parse_ok(const std::string& yaml, std::vector<ConfigWarning>* warnings = nullptr) {
  Result<TrainJobConfig> config = parse_train_config(yaml, "job.yaml", warnings);
  EXPECT_TRUE(config.ok()) << config.status().to_string();
  return config.ok() ? *config : TrainJobConfig{};
}

// The message of the error parsing `yaml` gives ("" when it parses).
std::string error_of(const std::string& yaml) {
  Result<TrainJobConfig> config = parse_train_config(yaml, "job.yaml", nullptr);
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), Code::invalid_argument);
  return config.status().message();
}

std::vector<std::string> warning_messages(const std::vector<ConfigWarning>& warnings) {
  std::vector<std::string> out;
  for (const auto& w : warnings) out.push_back(w.message);
  return out;
}

TEST(TrainConfigTest, ExamplesParseWithoutWarnings) {
  const fs::path dir = fs::path(CAIRN_SOURCE_DIR) / "configs" / "train";
  int count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    ++count;
    SCOPED_TRACE(entry.path().string());
    std::vector<ConfigWarning> warnings;
    Result<TrainJobConfig> config = load_train_config(entry.path().string(), &warnings);
    ASSERT_TRUE(config.ok()) << config.status().to_string();
    EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warning_messages(warnings));
    for (const auto& dataset : config->datasets) {
      EXPECT_TRUE(fs::path(dataset.path).is_absolute()) << dataset.path;
      // The pretraining corpus is generated (cairn train demo-data); the others are checked in.
      if (dataset.path.find("cairn-data") == std::string::npos) {
        EXPECT_TRUE(fs::exists(dataset.path)) << dataset.path;
      }
    }
  }
  EXPECT_EQ(count, 4);
}

// The fine-tune examples' datasets are valid for their types: every line becomes an example.
TEST(TrainConfigTest, ExampleDatasetsLoad) {
  Result<Tokenizer> tokenizer =
      Tokenizer::load(std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  for (const char* name : {"lora.yaml", "qlora.yaml", "chat.yaml"}) {
    SCOPED_TRACE(name);
    Result<TrainJobConfig> config =
        load_train_config(std::string(CAIRN_SOURCE_DIR) + "/configs/train/" + name, nullptr);
    ASSERT_TRUE(config.ok()) << config.status().to_string();
    DataOptions options = data_options(*config);
    options.bad_line_policy = BadLinePolicy::fail;
    Result<TokenizedDataset> data = load_datasets(config->datasets, *tokenizer, options);
    ASSERT_TRUE(data.ok()) << data.status().to_string();
    EXPECT_EQ(data->report.examples, data->report.lines);
    EXPECT_GT(data->train->size(), 0u);
    Result<TrainingSchedule> schedule = training_schedule(*config, static_cast<int64_t>(data->train->size()));
    ASSERT_TRUE(schedule.ok()) << schedule.status().to_string();
    EXPECT_GT(schedule->total_steps, schedule->warmup_steps);
  }
}

// The pretraining example's data settings on the real corpus (written here as demo-data would,
// tokenized with the fixture tokenizer rather than the demo's own): every entry is used, and the
// schedule is sane.
TEST(TrainConfigTest, PretrainExampleOnTheDemoCorpus) {
  Result<std::vector<std::string>> documents = devil_corpus_documents();
  if (!documents.ok()) GTEST_SKIP() << "no dict-devil: " << documents.status().to_string();
  TestDir dir;
  ASSERT_TRUE(write_completion_jsonl(*documents, dir.path("devil.jsonl")).ok());
  Result<TrainJobConfig> config =
      load_train_config(std::string(CAIRN_SOURCE_DIR) + "/configs/train/pretrain-devil.yaml", nullptr);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  config->datasets[0].path = dir.path("devil.jsonl");
  Result<Tokenizer> tokenizer =
      Tokenizer::load(std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  Result<TokenizedDataset> data = load_datasets(config->datasets, *tokenizer, data_options(*config));
  ASSERT_TRUE(data.ok()) << data.status().to_string();
  EXPECT_EQ(data->report.skipped_total(), 0);
  EXPECT_GT(data->report.split, 0);  // some entries are longer than 256 tokens
  Result<BatchStream> stream = BatchStream::create(*data, DataSplit::train, stream_options(*config, 0));
  ASSERT_TRUE(stream.ok()) << stream.status().to_string();
  Result<TrainingSchedule> schedule = training_schedule(*config, stream->rows_in_epoch(0));
  ASSERT_TRUE(schedule.ok()) << schedule.status().to_string();
  EXPECT_GT(schedule->total_steps, 50);
  EXPECT_GT(schedule->warmup_steps, 0);
  EXPECT_GT(schedule->eval_every, 0);
}

TEST(TrainConfigTest, PretrainExampleMakesTheSmallModel) {
  Result<TrainJobConfig> config =
      load_train_config(std::string(CAIRN_SOURCE_DIR) + "/configs/train/pretrain-devil.yaml", nullptr);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  ASSERT_TRUE(config->architecture.has_value());
  EXPECT_EQ(config->base_model.kind, ModelReference::Kind::none);
  EXPECT_EQ(config->sequence_len, 256);
  EXPECT_EQ(config->output_model, "devil");
  EXPECT_EQ(config->datasets[0].path, (fs::path(CAIRN_SOURCE_DIR) / "cairn-data/demo/devil.jsonl").lexically_normal().string());
  Result<LlamaConfig> llama = to_llama_config(*config->architecture, 4096, config->sequence_len);
  ASSERT_TRUE(llama.ok()) << llama.status().to_string();
  EXPECT_EQ(llama->hidden_size, 256);
  EXPECT_EQ(llama->intermediate_size, 768);
  EXPECT_EQ(llama->num_hidden_layers, 4);
  EXPECT_EQ(llama->num_attention_heads, 4);
  EXPECT_EQ(llama->num_key_value_heads, 4);
  EXPECT_EQ(llama->head_dim, 64);
  EXPECT_EQ(llama->max_position_embeddings, 256);
  EXPECT_EQ(llama->vocab_size, 4096);
  EXPECT_TRUE(llama->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(llama->rms_norm_eps, 1e-5);
}

TEST(TrainConfigTest, QloraExampleReadsAxolotlSpelling) {
  Result<TrainJobConfig> config =
      load_train_config(std::string(CAIRN_SOURCE_DIR) + "/configs/train/qlora.yaml", nullptr);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(config->adapter, AdapterKind::qlora);
  EXPECT_TRUE(config->lora_target_linear);
  EXPECT_EQ(config->base_model.kind, ModelReference::Kind::registry);
  EXPECT_EQ(config->base_model.name, "devil");
  EXPECT_EQ(config->base_model.alias, "latest");
  EXPECT_EQ(config->max_steps, 30);
}

TEST(TrainConfigTest, DefaultsOfAMinimalConfig) {
  TrainJobConfig c = parse_ok(kMinimal);
  EXPECT_EQ(c.base_model.to_string(), "devil@latest");
  ASSERT_EQ(c.datasets.size(), 1u);
  EXPECT_EQ(c.datasets[0].path, "data.jsonl");  // "job.yaml" has no directory: kept as written
  EXPECT_EQ(c.datasets[0].type, "completion");
  EXPECT_DOUBLE_EQ(c.learning_rate, 2e-4);
  EXPECT_EQ(c.sequence_len, 2048);
  EXPECT_EQ(c.adapter, AdapterKind::none);
  EXPECT_EQ(c.lora_r, 8);
  EXPECT_EQ(c.lora_target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.micro_batch_size, 1);
  EXPECT_EQ(c.num_epochs, 1);
  EXPECT_EQ(c.lr_scheduler, LrScheduler::cosine);
  EXPECT_EQ(c.bf16, Bf16Mode::off);
  EXPECT_EQ(c.seed, 42u);
  EXPECT_EQ(c.experiment, "train");
  EXPECT_EQ(c.num_workers, 1);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_DOUBLE_EQ(c.max_grad_norm, 1.0);
}

TEST(TrainConfigTest, NullKeepsTheDefault) {
  TrainJobConfig c = parse_ok(std::string(kMinimal) + "micro_batch_size:\nlora_r: null\nrun_name: ~\n");
  EXPECT_EQ(c.micro_batch_size, 1);
  EXPECT_EQ(c.lora_r, 8);
}

TEST(TrainConfigTest, RelativePathsResolveAgainstTheFile) {
  TestDir dir;
  fs::create_directories(dir.path("jobs/data"));
  std::ofstream(dir.path("jobs/job.yaml")) << R"(architecture: {}
tokenizer: ../tok/tokenizer.json
datasets:
  - {path: data/a.jsonl, type: completion}
  - {path: ./data/../b.jsonl, type: alpaca}
  - {path: /abs/c.jsonl, type: chat_template}
output_dir: out
learning_rate: 1e-3
)";
  Result<TrainJobConfig> c = load_train_config(dir.path("jobs/job.yaml"), nullptr);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->tokenizer, dir.path("tok/tokenizer.json"));
  EXPECT_EQ(c->datasets[0].path, dir.path("jobs/data/a.jsonl"));
  EXPECT_EQ(c->datasets[1].path, dir.path("jobs/b.jsonl"));
  EXPECT_EQ(c->datasets[2].path, "/abs/c.jsonl");
  EXPECT_EQ(c->output_dir, dir.path("jobs/out"));

  // A local base model resolves too; a registry reference does not.
  Result<TrainJobConfig> named = parse_train_config(
      "base_model: ./models/tiny\ndatasets: [{path: d.jsonl, type: completion}]\nlearning_rate: 1\n", "/x/job.yaml",
      nullptr);
  ASSERT_TRUE(named.ok()) << named.status().to_string();
  EXPECT_EQ(named->base_model.kind, ModelReference::Kind::local_dir);
  EXPECT_EQ(named->base_model.path, "/x/models/tiny");
  EXPECT_EQ(named->datasets[0].path, "/x/d.jsonl");
}

TEST(TrainConfigTest, LoadNamesAMissingFile) {
  Result<TrainJobConfig> c = load_train_config("/nonexistent/job.yaml", nullptr);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::not_found);
  EXPECT_NE(c.status().message().find("/nonexistent/job.yaml"), std::string::npos);
}

TEST(TrainConfigTest, ModelReferences) {
  auto ref = [](const std::string& text) { return parse_model_reference(text, "/base"); };
  ASSERT_TRUE(ref("devil@latest").ok());
  EXPECT_EQ(ref("devil@latest")->kind, ModelReference::Kind::registry);
  EXPECT_EQ(ref("devil@champion")->alias, "champion");
  EXPECT_EQ(ref("devil/3")->kind, ModelReference::Kind::registry);
  EXPECT_EQ(ref("devil/3")->name, "devil");
  EXPECT_EQ(ref("devil/3")->version, "3");
  EXPECT_EQ(ref("devil/3")->to_string(), "devil/3");
  EXPECT_EQ(ref("./devil/3")->kind, ModelReference::Kind::local_dir);
  EXPECT_EQ(ref("./devil/3")->path, "/base/devil/3");
  EXPECT_EQ(ref("models/tiny")->path, "/base/models/tiny");
  EXPECT_EQ(ref("/abs/tiny")->path, "/abs/tiny");
  EXPECT_EQ(ref("a/b/3")->kind, ModelReference::Kind::local_dir);
  EXPECT_EQ(ref("dir@x/model")->kind, ModelReference::Kind::local_dir);  // '@' before the last '/'
  EXPECT_EQ(ref("devil@").status().message(), "expected NAME@ALIAS, got \"devil@\" (the alias is empty)");
  EXPECT_FALSE(ref("").ok());
}

// ---- errors --------------------------------------------------------------------------------------

struct ErrorCase {
  std::string yaml;      // appended to kMinimal, or the whole file when `whole`
  std::string message;   // the exact message
  bool whole = false;
};

TEST(TrainConfigTest, ErrorsNameFileKeyValueAndWhatIsAllowed) {
  const std::string datasets2 =
      "base_model: devil@latest\nlearning_rate: 1e-4\ndatasets:\n  - {path: a.jsonl, type: completion}\n";
  const std::string no_lr = "base_model: devil@latest\ndatasets: [{path: a.jsonl, type: completion}]\n";
  const std::vector<ErrorCase> cases = {
      // enumerations, with list indices in the key path
      {datasets2 + "  - {path: b.jsonl, type: sharegpt}\n",
       "job.yaml: datasets[1].type: expected one of completion, alpaca, chat_template, got \"sharegpt\"", true},
      {datasets2 + "  - {path: b.jsonl}\n",
       "job.yaml: datasets[1].type: required: one of completion, alpaca, chat_template", true},
      {datasets2 + "  - {type: alpaca}\n", "job.yaml: datasets[1].path: required: a JSONL file", true},
      {datasets2 + "  - b.jsonl\n", "job.yaml: datasets[1]: expected a map {path, type}, got \"b.jsonl\"", true},
      {"adapter: dora\n", "job.yaml: adapter: expected one of none, lora, qlora, got \"dora\""},
      {"lr_scheduler: one_cycle\n", "job.yaml: lr_scheduler: expected one of cosine, linear, constant, got \"one_cycle\""},
      {"optimizer: sgd\n", "job.yaml: optimizer: expected one of adamw, adamw_torch, adamw_torch_fused, got \"sgd\""},
      {"bf16: maybe\n", "job.yaml: bf16: expected one of false, true, auto, got \"maybe\""},
      {"chat_template: llama3\n",
       "job.yaml: chat_template: expected one of tokenizer_default, chatml, jinja, got \"llama3\""},
      // wrong YAML types
      {no_lr + "learning_rate: fast\n", "job.yaml: learning_rate: expected a number, got \"fast\"", true},
      {"micro_batch_size: four\n", "job.yaml: micro_batch_size: expected a whole number, got \"four\""},
      {"micro_batch_size: 2.5\n", "job.yaml: micro_batch_size: expected a whole number, got \"2.5\""},
      {"sample_packing: yes please\n", "job.yaml: sample_packing: expected true or false, got \"yes please\""},
      {"sequence_len: [1, 2]\n", "job.yaml: sequence_len: expected a whole number, got a list"},
      {"lora_target_modules: q_proj\n", "job.yaml: lora_target_modules: expected a list of text, got \"q_proj\""},
      {"lora_target_modules: [q_proj, {a: 1}]\n", "job.yaml: lora_target_modules[1]: expected text, got a map"},
      {"base_model: devil@latest\nlearning_rate: 1\ndatasets: a.jsonl\n",
       "job.yaml: datasets: expected a list of {path, type}, got \"a.jsonl\"", true},
      {"architecture: 7\n", "job.yaml: architecture: expected a map of model sizes (hidden_size, num_hidden_layers, ...), got \"7\""},
      {"seed: -1\n", "job.yaml: seed: expected a whole number >= 0, got \"-1\""},
      // ranges
      {no_lr + "learning_rate: 0\n", "job.yaml: learning_rate: expected a positive number, got 0", true},
      {"micro_batch_size: 0\n", "job.yaml: micro_batch_size: expected a whole number >= 1, got 0"},
      {"sequence_len: 1\n", "job.yaml: sequence_len: expected a whole number >= 2, got 1"},
      {"num_workers: 0\n", "job.yaml: num_workers: expected a whole number >= 1, got 0"},
      {"lora_dropout: 1.5\n", "job.yaml: lora_dropout: expected a number in [0, 1), got 1.5"},
      {"val_set_size: 2.5\n", "job.yaml: val_set_size: expected a fraction in [0, 1) or a whole number of examples, got 2.5"},
      {"adam_beta2: 1\n", "job.yaml: adam_beta2: expected a number in [0, 1), got 1"},
      {"max_grad_norm: -1\n", "job.yaml: max_grad_norm: expected a number >= 0, got -1"},
      {"device: tpu\n", "job.yaml: device: expected cpu, cuda or cuda:N, got \"tpu\""},
      {"output_model: a/b\n",
       "job.yaml: output_model: expected a registry model name (1 to 256 characters, without '/', '@' or control "
       "characters), got \"a/b\""},
      {"experiment: ''\n", "job.yaml: experiment: expected a registry experiment name, got \"\""},
      // cross-field rules
      {"adapter: lora\nlora_r: 0\n", "job.yaml: lora_r: expected a whole number >= 1, got 0"},
      {"warmup_steps: 10\nwarmup_ratio: 0.1\n", "job.yaml: warmup_ratio: give at most one of warmup_steps and warmup_ratio"},
      {"max_steps: 10\nwarmup_steps: 10\n", "job.yaml: warmup_steps: 10 is not below max_steps 10"},
      {"evals_per_epoch: 2\neval_steps: 5\n", "job.yaml: eval_steps: give at most one of evals_per_epoch and eval_steps"},
      {"saves_per_epoch: 2\nsave_steps: 5\n", "job.yaml: save_steps: give at most one of saves_per_epoch and save_steps"},
      {"early_stopping_patience: 2\n", "job.yaml: early_stopping_patience: needs a validation set (val_set_size > 0)"},
      {"early_stopping_patience: 2\nval_set_size: 0.1\n",
       "job.yaml: early_stopping_patience: needs evaluations during training (evals_per_epoch or eval_steps)"},
      {"bf16: true\nfp16: true\n", "job.yaml: fp16: give at most one of bf16 and fp16"},
      {"load_in_4bit: true\n", "job.yaml: load_in_4bit: true needs adapter: qlora (Cairn's 4-bit base is QLoRA's NF4)"},
      {"adapter: lora\nlora_target_modules: []\n",
       "job.yaml: lora_target_modules: empty: name the modules to adapt, or set lora_target_linear: true"},
      {"nodes: [127.0.0.1:7420, nope]\n",
       "job.yaml: nodes[1]: expected HOST:PORT, got \"nope\" (missing \":PORT\")"},
      {"nodes: [127.0.0.1:0]\n", "job.yaml: nodes[0]: expected a node's protocol address HOST:PORT with a port, got \"127.0.0.1:0\""},
      {"chat_template: jinja\n", "job.yaml: chat_template_jinja: required with chat_template: jinja: the template's Jinja source"},
      {"chat_template: chatml\nchat_template_jinja: '{{ x }}'\n",
       "job.yaml: chat_template_jinja: only used with chat_template: jinja, not chatml"},
      {"architecture: {}\n",
       "job.yaml: architecture: give exactly one of base_model (a model to fine-tune) and architecture (a model to "
       "pretrain from scratch)"},
      {"datasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1e-3\n",
       "job.yaml: base_model: give exactly one of base_model (a model to fine-tune) and architecture (a model to "
       "pretrain from scratch)", true},
      {"architecture: {}\ndatasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1e-3\n",
       "job.yaml: tokenizer: required with architecture: a tokenizer.json or a directory holding one", true},
      {"architecture: {}\ntokenizer: t.json\nadapter: qlora\ndatasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1\n",
       "job.yaml: adapter: qlora needs base_model: adapters train on top of pretrained weights", true},
      {"architecture: {hidden_size: 250}\ntokenizer: t.json\ndatasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1\n",
       "job.yaml: architecture.num_attention_heads: 4 does not divide hidden_size 250", true},
      {"architecture: {num_key_value_heads: 3}\ntokenizer: t.json\ndatasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1\n",
       "job.yaml: architecture.num_key_value_heads: 3 does not divide num_attention_heads 4", true},
      {"architecture: {max_position_embeddings: 128}\nsequence_len: 256\ntokenizer: t.json\n"
       "datasets: [{path: a.jsonl, type: completion}]\nlearning_rate: 1\n",
       "job.yaml: architecture.max_position_embeddings: 128 is below sequence_len 256", true},
      // required keys, duplicates, synonyms given twice
      {"base_model: devil@latest\ndatasets: [{path: a.jsonl, type: completion}]\n",
       "job.yaml: learning_rate: required: the peak learning rate, a positive number such as 2e-4", true},
      {"base_model: devil@latest\nlearning_rate: 1e-4\n",
       "job.yaml: datasets: expected a list of at least one {path, type}, got none", true},
      {"learning_rate: 1e-3\n", "job.yaml: learning_rate: appears twice"},
      {"output_model: a\nhub_model_id: b\n", "job.yaml: hub_model_id: appears twice (as output_model and hub_model_id)"},
      {"base_model: devil@\n", "job.yaml: base_model: expected NAME@ALIAS, got \"devil@\" (the alias is empty)", true},
      // the top level
      {"- a\n- b\n", "job.yaml: (top level): expected a map of keys (see docs/TRAINING.md), got a list", true},
      {"", "job.yaml: (top level): expected a map of keys (see docs/TRAINING.md), got an empty document", true},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.yaml);
    EXPECT_EQ(error_of(c.whole ? c.yaml : std::string(kMinimal) + c.yaml), c.message);
  }
}

TEST(TrainConfigTest, YamlSyntaxErrorsNameTheLine) {
  std::string message = error_of("learning_rate: 1\nsequence_len: 256\n  bad: indent\n");
  EXPECT_EQ(message.rfind("job.yaml:3:", 0), 0u) << message;
  EXPECT_NE(message.find("malformed YAML"), std::string::npos) << message;
}

TEST(TrainConfigTest, ChatTemplateJinjaIsChecked) {
  std::string message = error_of(std::string(kMinimal) + "chat_template: jinja\nchat_template_jinja: '{% for %}'\n");
  EXPECT_EQ(message.rfind("job.yaml: chat_template_jinja: chat template: line 1", 0), 0u) << message;
  // chat_template_jinja alone implies chat_template: jinja.
  TrainJobConfig c = parse_ok(std::string(kMinimal) + "chat_template_jinja: '{{ messages[0].content }}'\n");
  EXPECT_EQ(c.chat_template, ChatTemplateChoice::jinja);
  EXPECT_EQ(data_options(c).chat_template, "{{ messages[0].content }}");
}

// ---- warnings ------------------------------------------------------------------------------------

TEST(TrainConfigTest, UnknownKeysWarnWithASuggestion) {
  std::vector<ConfigWarning> warnings;
  TrainJobConfig c = parse_ok(std::string(kMinimal) +
                                  "lerning_rate: 1\nmicro_batch_sise: 4\nfoo_bar_baz: 1\n"
                                  "architecture_x: 1\n",
                              &warnings);
  EXPECT_EQ(c.micro_batch_size, 1);
  ASSERT_EQ(warnings.size(), 4u);
  EXPECT_EQ(warnings[0].key, "lerning_rate");
  EXPECT_EQ(warnings[0].message, "job.yaml: unknown key \"lerning_rate\" (did you mean \"learning_rate\"?); ignored");
  EXPECT_EQ(warnings[1].message,
            "job.yaml: unknown key \"micro_batch_sise\" (did you mean \"micro_batch_size\"?); ignored");
  EXPECT_EQ(warnings[2].message, "job.yaml: unknown key \"foo_bar_baz\"; ignored");
  EXPECT_EQ(warnings[3].key, "architecture_x");
}

TEST(TrainConfigTest, NestedUnknownKeysWarnWithTheirPath) {
  std::vector<ConfigWarning> warnings;
  parse_ok(R"(base_model: devil@latest
learning_rate: 1e-4
datasets:
  - path: a.jsonl
    type: completion
    tpye: x
  - path: b.jsonl
    type: chat_template
    field_messages: conversations
)",
           &warnings);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0].key, "datasets[0].tpye");
  EXPECT_EQ(warnings[0].message, "job.yaml: unknown key \"datasets[0].tpye\" (did you mean \"type\"?); ignored");
  EXPECT_EQ(warnings[1].key, "datasets[1].field_messages");
  EXPECT_EQ(warnings[1].message, "job.yaml: datasets[1].field_messages: ignored (Cairn reads only path and type here)");

  warnings.clear();
  TrainJobConfig c = parse_ok(
      "architecture: {hiden_size: 64}\ntokenizer: t.json\ndatasets: [{path: a, type: completion}]\nlearning_rate: 1\n",
      &warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0].message,
            "job.yaml: unknown key \"architecture.hiden_size\" (did you mean \"hidden_size\"?); ignored");
  EXPECT_EQ(c.architecture->hidden_size, 256);
}

TEST(TrainConfigTest, AxolotlKeysCairnDoesNotImplementAreIgnoredByName) {
  std::vector<ConfigWarning> warnings;
  parse_ok(std::string(kMinimal) +
               "deepspeed: deepspeed_configs/zero2.json\nflash_attention: true\nwandb_project: x\n"
               "load_in_8bit: false\nspecial_tokens:\n  pad_token: <pad>\n",
           &warnings);
  ASSERT_EQ(warnings.size(), 5u);
  EXPECT_EQ(warnings[0].key, "deepspeed");
  EXPECT_EQ(warnings[0].message, "job.yaml: deepspeed: ignored (Cairn's data parallelism is num_workers and nodes)");
  EXPECT_EQ(warnings[1].message, "job.yaml: flash_attention: ignored (Cairn chooses its own kernels)");
  EXPECT_EQ(warnings[2].key, "wandb_project");
  EXPECT_EQ(warnings[3].key, "load_in_8bit");
  EXPECT_EQ(warnings[4].key, "special_tokens");
}

// ---- synonyms ------------------------------------------------------------------------------------

TEST(TrainConfigTest, AxolotlSynonyms) {
  std::vector<ConfigWarning> warnings;
  TrainJobConfig c = parse_ok(std::string(kMinimal) +
                                  "hub_model_id: my-model\ntokenizer_config: tok\noptimizer: adamw_torch_fused\n"
                                  "bf16: auto\nadapter: qlora\nload_in_4bit: true\n",
                              &warnings);
  EXPECT_TRUE(warnings.empty());
  EXPECT_EQ(c.output_model, "my-model");
  EXPECT_EQ(c.tokenizer, "tok");
  EXPECT_EQ(c.optimizer, OptimizerKind::adamw);
  EXPECT_EQ(c.bf16, Bf16Mode::automatic);
  EXPECT_EQ(c.adapter, AdapterKind::qlora);
  EXPECT_EQ(parse_ok(std::string(kMinimal) + "optimizer: adamw_torch\n").optimizer, OptimizerKind::adamw);
  EXPECT_EQ(parse_ok(std::string(kMinimal) + "bf16: true\n").bf16, Bf16Mode::on);
  EXPECT_EQ(parse_ok(std::string(kMinimal) + "bf16: false\n").bf16, Bf16Mode::off);
  EXPECT_EQ(parse_ok(std::string(kMinimal) + "adapter: none\n").adapter, AdapterKind::none);
  EXPECT_EQ(parse_ok(std::string(kMinimal) + "adapter:\n").adapter, AdapterKind::none);
  // "2e-4" is text to YAML 1.1 (no dot); read as the number, as Axolotl does.
  EXPECT_DOUBLE_EQ(parse_ok(std::string(kMinimal) + "weight_decay: 1e-2\n").weight_decay, 0.01);
}

// ---- digest --------------------------------------------------------------------------------------

TEST(TrainConfigTest, DigestIgnoresKeyOrderAndSpellingButNotValues) {
  const std::string a = std::string(kMinimal) + "adapter: lora\nlora_r: 16\noptimizer: adamw\nhub_model_id: m\n";
  const std::string b = R"(
# the same job, written differently
optimizer: adamw_torch
output_model: m
lora_r: 16
adapter: lora
learning_rate: 0.0002
datasets: [{type: completion, path: data.jsonl}]
base_model: devil@latest
wandb_project: ignored
)";
  TrainJobConfig ca = parse_ok(a);
  TrainJobConfig cb = parse_ok(b);
  EXPECT_EQ(to_canonical_json(ca), to_canonical_json(cb));
  EXPECT_EQ(train_config_digest(ca), train_config_digest(cb));
  EXPECT_EQ(train_config_digest(ca).rfind("fnv1a64:", 0), 0u);
  EXPECT_EQ(train_config_digest(ca).size(), 8u + 16u);

  TrainJobConfig changed = parse_ok(a + "seed: 43\n");
  EXPECT_NE(train_config_digest(ca), train_config_digest(changed));
  changed = parse_ok(std::string(kMinimal) + "adapter: lora\nlora_r: 8\noptimizer: adamw\nhub_model_id: m\n");
  EXPECT_NE(train_config_digest(ca), train_config_digest(changed));

  // Stable across builds and platforms: a fixed config has a fixed digest.
  TrainJobConfig fixed = parse_ok(kMinimal);
  EXPECT_EQ(train_config_digest(fixed), train_config_digest(parse_ok(kMinimal)));
  EXPECT_NE(to_canonical_json(fixed).find("\"learning_rate\":0.0002"), std::string::npos) << to_canonical_json(fixed);
}

// ---- overrides -----------------------------------------------------------------------------------

TEST(TrainConfigTest, OverridesSetKeysBeforeParsing) {
  Result<std::string> yaml = apply_train_config_overrides(
      kMinimal, {"max_steps=20", "learning_rate=1e-3", "architecture.hidden_size=128", "nodes=[a:1, b:2]"});
  ASSERT_TRUE(yaml.ok()) << yaml.status().to_string();
  // architecture and base_model together: the override shows up in validation.
  EXPECT_EQ(error_of(*yaml),
            "job.yaml: architecture: give exactly one of base_model (a model to fine-tune) and architecture (a model "
            "to pretrain from scratch)");
  yaml = apply_train_config_overrides(kMinimal, {"max_steps=20", "learning_rate=1e-3", "nodes=[a:1, b:2]"});
  ASSERT_TRUE(yaml.ok());
  TrainJobConfig c = parse_ok(*yaml);
  EXPECT_EQ(c.max_steps, 20);
  EXPECT_DOUBLE_EQ(c.learning_rate, 1e-3);
  EXPECT_EQ(c.nodes, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(apply_train_config_overrides(kMinimal, {"max_steps"}).status().message(),
            "override \"max_steps\": expected KEY=VALUE");
  EXPECT_EQ(apply_train_config_overrides(kMinimal, {"learning_rate.x=1"}).status().message(),
            "override \"learning_rate.x=1\": learning_rate is not a map");
  EXPECT_EQ(*apply_train_config_overrides(kMinimal, {}), kMinimal);
  // Malformed YAML comes back as it is, for the parser's message with the line.
  EXPECT_EQ(*apply_train_config_overrides("a: [1\n", {"b=2"}), "a: [1\n");
  EXPECT_EQ(*apply_train_config_overrides("", {"max_steps=3"}), "max_steps: 3\n");
}

// ---- schedule ------------------------------------------------------------------------------------

TEST(TrainConfigTest, TotalOptimizerSteps) {
  TrainJobConfig c = parse_ok(std::string(kMinimal) + "micro_batch_size: 4\ngradient_accumulation_steps: 2\n"
                                                      "num_workers: 2\nnum_epochs: 3\n");
  // 16 rows per step: ceil(100 / 16) = 7 steps an epoch.
  EXPECT_EQ(*total_optimizer_steps(c, 100), 21);
  EXPECT_EQ(*total_optimizer_steps(c, 96), 18);
  EXPECT_EQ(*total_optimizer_steps(c, 1), 3);
  c.max_steps = 5;
  EXPECT_EQ(*total_optimizer_steps(c, 100), 5);
  EXPECT_EQ(*total_optimizer_steps(c, 0), 5);  // max_steps needs no epoch length
  c.max_steps = 0;
  EXPECT_EQ(total_optimizer_steps(c, 0).status().message(),
            "datasets: the training split has no rows, so an epoch has no steps");
}

TEST(TrainConfigTest, ScheduleWarmupAndIntervals) {
  TrainJobConfig c = parse_ok(std::string(kMinimal) + "num_epochs: 2\nwarmup_ratio: 0.1\nevals_per_epoch: 2\n"
                                                      "save_steps: 7\nval_set_size: 0.1\n");
  Result<TrainingSchedule> s = training_schedule(c, 50);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->rows_per_step, 1);
  EXPECT_EQ(s->steps_per_epoch, 50);
  EXPECT_EQ(s->total_steps, 100);
  EXPECT_EQ(s->warmup_steps, 10);  // ceil(0.1 * 100)
  EXPECT_EQ(s->eval_every, 25);    // 100 / (2 evals * 2 epochs)
  EXPECT_EQ(s->save_every, 7);

  c.warmup_ratio.reset();
  c.warmup_steps = 30;
  EXPECT_EQ(training_schedule(c, 10).status().message(),
            "warmup_steps: 30 warmup steps are not below the 20 optimizer steps of the job");
}

TEST(TrainConfigTest, LearningRateSchedules) {
  TrainJobConfig c = parse_ok(std::string(kMinimal) + "warmup_steps: 10\nmax_steps: 110\n");
  c.learning_rate = 1.0;
  TrainingSchedule s = *training_schedule(c, 1000);
  ASSERT_EQ(s.total_steps, 110);
  ASSERT_EQ(s.warmup_steps, 10);
  c.lr_scheduler = LrScheduler::cosine;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(c, s, 0), 0.0);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(c, s, 5), 0.5);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(c, s, 10), 1.0);
  EXPECT_NEAR(scheduled_learning_rate(c, s, 60), 0.5, 1e-12);
  EXPECT_NEAR(scheduled_learning_rate(c, s, 109), 0.5 * (1 + std::cos(M_PI * 0.99)), 1e-12);
  c.lr_scheduler = LrScheduler::linear;
  EXPECT_NEAR(scheduled_learning_rate(c, s, 60), 0.5, 1e-12);
  EXPECT_NEAR(scheduled_learning_rate(c, s, 109), 0.01, 1e-12);
  c.lr_scheduler = LrScheduler::constant;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(c, s, 5), 0.5);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(c, s, 100), 1.0);
}

TEST(TrainConfigTest, DataAndStreamOptions) {
  TrainJobConfig c = parse_ok(std::string(kMinimal) +
                              "sequence_len: 512\ntrain_on_inputs: true\nval_set_size: 0.2\nseed: 9\n"
                              "sample_packing: true\nnum_workers: 3\nnum_epochs: 2\n"
                              "excess_length_strategy: truncate\nshuffle_merged_datasets: false\n");
  DataOptions d = data_options(c);
  EXPECT_EQ(d.sequence_len, 512);
  EXPECT_TRUE(d.train_on_inputs);
  EXPECT_DOUBLE_EQ(d.val_set_size, 0.2);
  EXPECT_EQ(d.seed, 9u);
  EXPECT_EQ(d.long_example_policy, LongExamplePolicy::truncate);
  EXPECT_EQ(d.chat_template, "");  // tokenizer_default: the caller loads it
  StreamOptions st = stream_options(c, 2);
  EXPECT_TRUE(st.sample_packing);
  EXPECT_FALSE(st.shuffle);
  EXPECT_EQ(st.num_shards, 3);
  EXPECT_EQ(st.shard_index, 2);
  EXPECT_EQ(st.num_epochs, 2);
  c.max_steps = 10;
  EXPECT_EQ(stream_options(c, 0).num_epochs, 0);
}

TEST(TrainConfigTest, ArchitectureDerivations) {
  ArchitectureSpec spec;
  spec.hidden_size = 4096;
  spec.num_attention_heads = 32;
  spec.num_key_value_heads = 8;
  Result<LlamaConfig> llama = to_llama_config(spec, 32000, 2048);
  ASSERT_TRUE(llama.ok()) << llama.status().to_string();
  EXPECT_EQ(llama->intermediate_size, 11008);
  EXPECT_EQ(llama->num_key_value_heads, 8);
  EXPECT_EQ(llama->head_dim, 128);
  EXPECT_EQ(llama->max_position_embeddings, 2048);
  spec.vocab_size = 100;
  EXPECT_EQ(to_llama_config(spec, 32000, 2048).status().message(),
            "architecture.vocab_size: 100 is below the tokenizer's 32000 tokens");
  spec.vocab_size = 32768;
  EXPECT_EQ(to_llama_config(spec, 32000, 2048)->vocab_size, 32768);
}

}  // namespace
}  // namespace cairn

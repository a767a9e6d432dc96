// Training data: JSONL datasets in Axolotl's formats, tokenized into documents, split into train
// and validation sets, and streamed as fixed-length rows (packed or padded), shuffled by seed and
// sharded across data-parallel workers, with a cursor that resumes exactly where it stopped.
// Torch-free: rows are plain int32 vectors.
//
// Flow: load_datasets() reads and tokenizes every line once → TokenizedDataset (documents + report
// + digest); BatchStream::create() walks one of its splits epoch by epoch for shard k of N.
//
// Labels follow the Hugging Face convention: labels[i] is the token at position i (labels ==
// input_ids where trained), and the model shifts, predicting labels[i] from positions <= i-1.
// kIgnoreLabel marks positions that are not trained: prompt tokens (unless train_on_inputs), padding,
// and the first token of every document, which nothing in its own document predicts (so a shifting
// loss never crosses from one packed document into the next).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/status.h"

namespace cairn {

class Tokenizer;

inline constexpr int32_t kIgnoreLabel = -100;

// One JSONL file, as Axolotl's `datasets: [{path, type}]` names it. Each line is one example:
//   completion     {"text": "..."}: [bos] text [eos], all trained;
//   alpaca         {"instruction", "input" (optional, may be ""), "output"}: Axolotl's alpaca prompt
//                  ("Below is an instruction that describes a task..."), then output [eos]; only
//                  output and eos are trained unless train_on_inputs;
//   chat_template  {"messages": [{"role", "content"}, ...]}: rendered with the chat template; only
//                  the assistant turns (their content and end-of-turn token) are trained unless
//                  train_on_inputs.
// Blank lines are ignored. Other fields of a line are ignored.
struct DatasetSpec {
  std::string path;
  std::string type;  // "completion", "alpaca" or "chat_template"
};

// What happens to a line that cannot be used (see BadLineReason).
enum class BadLinePolicy : uint8_t {
  skip,  // report it (log + DataReport) and go on
  fail,  // load_datasets fails with invalid_argument naming the file, line and reason
};

// What happens to an example longer than sequence_len tokens.
enum class LongExamplePolicy : uint8_t {
  drop,      // a bad line with reason too_long (so bad_line_policy decides); Axolotl's default
  truncate,  // keep its first sequence_len tokens
  split,     // cut it into sequence_len pieces, each its own document (for pretraining text);
             // pieces with nothing to train on are dropped
};

// Options of load_datasets. Every field that changes the documents goes into the digest.
struct DataOptions {
  // Tokens per row; no document is longer. Must be >= 2.
  int32_t sequence_len = 2048;
  // false: prompt tokens get kIgnoreLabel and only completions/assistant turns are trained.
  bool train_on_inputs = false;
  // The validation split: a fraction of the examples in [0, 1), or a count when >= 1. Chosen by
  // `seed`, at the level of examples (lines), before packing. 0: no validation set.
  double val_set_size = 0.0;
  // Seeds the validation split.
  uint64_t seed = 42;
  BadLinePolicy bad_line_policy = BadLinePolicy::skip;
  LongExamplePolicy long_example_policy = LongExamplePolicy::drop;
  // Jinja source of the chat template for chat_template datasets; empty: ChatML. Use
  // load_chat_template() (model/chat_template.h) for the one beside a tokenizer. Its bos_token and
  // eos_token are the texts of the tokenizer's bos_id()/eos_id() when those are added tokens.
  std::string chat_template;
  // Put the tokenizer's bos_id() (when it has one) in front of completion and alpaca examples.
  // Chat templates write their own (bos_token).
  bool add_bos = true;
};

// Why a line was not used.
enum class BadLineReason : uint8_t {
  invalid_json,       // not parseable JSON, or not an object
  missing_field,      // a field the format needs is absent
  wrong_type,         // a field has the wrong JSON type (e.g. "text" is a number)
  too_long,           // more than sequence_len tokens, under LongExamplePolicy::drop
  no_trained_tokens,  // nothing left to train on (e.g. a chat without assistant turns)
  template_error,     // the chat template failed on this conversation (e.g. raise_exception)
};
// "invalid_json", "missing_field", ...
std::string_view bad_line_reason_name(BadLineReason reason);

struct BadLine {
  std::string file;
  int64_t line = 0;  // 1-based
  BadLineReason reason = BadLineReason::invalid_json;
  std::string message;  // "data.jsonl:7: missing_field: \"output\" is missing"
};

// What load_datasets read and what it left out.
struct DataReport {
  int64_t lines = 0;       // non-blank lines read
  int64_t examples = 0;    // lines that became documents
  int64_t truncated = 0;   // examples cut to sequence_len (LongExamplePolicy::truncate)
  int64_t split = 0;       // examples cut into several documents (LongExamplePolicy::split)
  std::map<BadLineReason, int64_t> skipped;  // lines left out, by reason
  std::vector<BadLine> bad_lines;            // the first kMaxReportedBadLines of them
  static constexpr size_t kMaxReportedBadLines = 100;

  int64_t skipped_total() const;
};

// One tokenized example (or piece of one); input_ids.size() == labels.size() <= sequence_len.
struct Document {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;  // input_ids[i] or kIgnoreLabel; labels[0] is always kIgnoreLabel
  int32_t dataset = 0;          // index into the specs given to load_datasets
  int64_t line = 0;             // 1-based line of that file
};

using Documents = std::vector<Document>;

struct TokenizedDataset {
  // Both in file order (specs in order, then lines). Shared, so streams over them are cheap.
  std::shared_ptr<const Documents> train;
  std::shared_ptr<const Documents> val;
  int32_t sequence_len = 0;
  int32_t pad_id = 0;  // the tokenizer's eos_id(), else 0; rows are padded with it
  DataReport report;
  // A stable digest of the options that shape documents and of every document's tokens and labels
  // (not of file paths): "fnv1a64:<16 hex digits>". For lineage; not cryptographic.
  std::string digest;
};

// Reads, parses and tokenizes every spec. Fails with not_found / io_error naming a file that
// cannot be read; invalid_argument for bad options, an unknown type, a chat template that does not
// parse, a bad line under BadLinePolicy::fail ("path:line: reason: problem"), or when nothing is
// left to train on. Bad lines are logged (spdlog, the first few each, then a count by reason).
Result<TokenizedDataset> load_datasets(const std::vector<DatasetSpec>& specs, const Tokenizer& tokenizer,
                                       const DataOptions& options);

// ---------------------------------------------------------------------------------------------
// Streaming rows

// One training row of exactly sequence_len positions: documents back to back, then padding.
// Attention must stay within a document: position i may attend to j <= i only when both lie in
// the same document (doc_lens gives the boundaries). Padding positions come after sum(doc_lens);
// they carry pad_id, kIgnoreLabel, and position ids 0, 1, ... as one more segment.
struct PackedRow {
  std::vector<int32_t> input_ids;     // sequence_len
  std::vector<int32_t> labels;        // sequence_len, see the top of this file
  std::vector<int32_t> position_ids;  // sequence_len, restarting at 0 at each document
  std::vector<int32_t> doc_lens;      // document lengths in order; sum <= sequence_len
  int64_t epoch = 0;                  // the epoch the row belongs to
  int64_t index = 0;                  // global row index over all shards and epochs
};

enum class DataSplit : uint8_t { train, val };

struct StreamOptions {
  // Several documents per row (next-fit over a window of open rows, in shuffled order); false:
  // one document per row, padded.
  bool sample_packing = false;
  // How many partly filled rows packing keeps open; a document goes into the first that has room.
  // 1 is plain next-fit; more fills rows better and reorders documents a little.
  int32_t packing_window = 8;
  // Shuffle the documents anew each epoch (by seed and epoch); false: file order every epoch.
  bool shuffle = true;
  uint64_t seed = 42;
  // This stream yields the rows whose global index % num_shards == shard_index. Every shard packs
  // the same global sequence of rows, so N workers taking b rows each per step see exactly the
  // rows one worker taking N*b rows would (data-parallel equivalence), shards stay within one row
  // of each other, and their union is every row once.
  int32_t num_shards = 1;
  int32_t shard_index = 0;
  // Epochs to yield; 0 runs forever (stop by step count).
  int64_t num_epochs = 1;
};

// Where a stream stands: enough to continue with exactly the rows an uninterrupted stream would
// have yielded next. Taken after each row (BatchStream::cursor()) and saved with checkpoints.
struct DataCursor {
  int64_t epoch = 0;
  int64_t next_document = 0;  // position in the epoch's (shuffled) order of the next document
  int64_t next_row = 0;       // global index of the next row (all shards)
  // Packing carry-over: the rows still open, as document indices in the split.
  std::vector<std::vector<int64_t>> open_rows;
  // Of the dataset digest, split and stream options that matter; checked on resume.
  std::string fingerprint;

  // {"version": 1, "epoch": ..., "next_document": ..., "next_row": ..., "open_rows": [[...]],
  //  "fingerprint": "..."}
  std::string to_json() const;
  // invalid_argument naming what is wrong when `json` is not a cursor.
  static Result<DataCursor> from_json(std::string_view json);
};

// Yields rows of one split for one shard. Not thread-safe: owned by one actor or thread. Shares
// the documents with the TokenizedDataset it came from.
class BatchStream {
 public:
  // Starts at the beginning, or at `resume` (a cursor() of a stream over the same dataset, split
  // and options; num_epochs may differ). invalid_argument for bad options or a cursor that does
  // not belong to this stream.
  static Result<BatchStream> create(const TokenizedDataset& dataset, DataSplit split, const StreamOptions& options,
                                    const DataCursor* resume = nullptr);

  // The next row of this shard, or nullopt once num_epochs are done (or the split is empty).
  std::optional<PackedRow> next();

  // The position after the last row next() returned.
  DataCursor cursor() const;

  // How many rows epoch `epoch` has over all shards (packing depends on the epoch's order).
  int64_t rows_in_epoch(int64_t epoch) const;

 private:
  struct State;
  explicit BatchStream(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;  // never null; not shared with another stream
};

// ---------------------------------------------------------------------------------------------
// Demo corpus

// The entries of Ambrose Bierce's "The Devil's Dictionary" (Debian package dict-devil, public
// domain), one document each, in dictionary order, without the dictd metadata entries. Reads
// devil.index and devil.dict.dz (a dictzip file, decompressed with zlib) from `dictd_dir`.
// not_found / io_error name a missing or unreadable file, data_loss a corrupt one.
Result<std::vector<std::string>> devil_corpus_documents(const std::string& dictd_dir = "/usr/share/dictd");

// Writes `documents` as a completion JSONL file ({"text": ...} per line), atomically. io_error
// names the path.
Status write_completion_jsonl(const std::vector<std::string>& documents, const std::string& path);

}  // namespace cairn

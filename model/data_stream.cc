// BatchStream: the epoch order, packing, sharding and the cursor.
//
// Every shard runs the same packer over the same global sequence of rows and keeps the rows whose
// global index falls to it, so the rows of all shards together are exactly the rows of one
// unsharded stream. Rows that belong to other shards are only counted, never built.
#include <nlohmann/json.hpp>

#include "model/data.h"
#include "model/detail/data_util.h"

namespace cairn {

namespace {

struct OpenRow {
  std::vector<int64_t> docs;  // document indices in the split
  int32_t used = 0;           // tokens
};

// Where the packer stands inside the global sequence of rows.
struct PackerState {
  int64_t epoch = 0;
  int64_t position = 0;  // in order
  std::vector<OpenRow> open;
  std::vector<int64_t> order;  // the documents of `epoch`, in the order they are packed
  int64_t order_epoch = -1;    // the epoch `order` was made for
};

}  // namespace

struct BatchStream::State {
  // Constant after create().
  std::shared_ptr<const Documents> docs;
  StreamOptions options;
  int32_t sequence_len = 0;
  int32_t pad_id = 0;
  std::string fingerprint;

  PackerState packer;
  int64_t next_row = 0;  // global index of the next row the packer closes

  int32_t length(int64_t doc) const { return static_cast<int32_t>((*docs)[static_cast<size_t>(doc)].input_ids.size()); }

  void ensure_order(PackerState& s) const {
    if (s.order_epoch == s.epoch) return;
    const int64_t n = static_cast<int64_t>(docs->size());
    if (options.shuffle) {
      s.order = detail::seeded_permutation(n, detail::derive_seed(options.seed, "shuffle", static_cast<uint64_t>(s.epoch)));
    } else {
      s.order.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) s.order[i] = i;
    }
    s.order_epoch = s.epoch;
  }

  // The documents of the next row the packer closes in s.epoch, or nullopt when that epoch has no
  // more. Packing: each document goes into the first open row with room; a row that fills exactly
  // closes at once; a document that fits no open row, when the window is full, first closes the
  // oldest open row (and is placed on the next call); at the end of the epoch the open rows close
  // oldest first.
  std::optional<std::vector<int64_t>> close_next_in_epoch(PackerState& s) const {
    ensure_order(s);
    const int64_t n = static_cast<int64_t>(s.order.size());
    while (true) {
      if (s.position >= n) {
        if (s.open.empty()) return std::nullopt;
        std::vector<int64_t> row = std::move(s.open.front().docs);
        s.open.erase(s.open.begin());
        return row;
      }
      const int64_t doc = s.order[s.position];
      const int32_t len = length(doc);
      if (!options.sample_packing) {
        ++s.position;
        return std::vector<int64_t>{doc};
      }
      bool placed = false;
      for (size_t r = 0; r < s.open.size(); ++r) {
        if (s.open[r].used + len > sequence_len) continue;
        s.open[r].docs.push_back(doc);
        s.open[r].used += len;
        ++s.position;
        placed = true;
        if (s.open[r].used == sequence_len) {
          std::vector<int64_t> row = std::move(s.open[r].docs);
          s.open.erase(s.open.begin() + static_cast<ptrdiff_t>(r));
          return row;
        }
        break;
      }
      if (placed) continue;
      if (static_cast<int32_t>(s.open.size()) < options.packing_window) {
        s.open.push_back(OpenRow{{doc}, len});
        ++s.position;
        if (len == sequence_len) {
          std::vector<int64_t> row = std::move(s.open.back().docs);
          s.open.pop_back();
          return row;
        }
        continue;
      }
      std::vector<int64_t> row = std::move(s.open.front().docs);
      s.open.erase(s.open.begin());
      return row;
    }
  }

  // ok when `cursor` is a position of this stream.
  Status check(const DataCursor& cursor) const {
    auto bad = [](const std::string& what) { return error(Code::invalid_argument, "data cursor: " + what); };
    if (cursor.fingerprint != fingerprint) {
      return bad("it belongs to another dataset, split, shard or stream options (fingerprint " + cursor.fingerprint +
                 ", this stream's " + fingerprint + ")");
    }
    const int64_t n = static_cast<int64_t>(docs->size());
    if (cursor.epoch < 0 || cursor.next_document < 0 || cursor.next_document > n || cursor.next_row < 0) {
      return bad("epoch, next_document or next_row out of range");
    }
    if (static_cast<int64_t>(cursor.open_rows.size()) > (options.sample_packing ? options.packing_window : 0)) {
      return bad("more open rows than packing_window");
    }
    for (const auto& row : cursor.open_rows) {
      int64_t used = 0;
      if (row.empty()) return bad("an open row is empty");
      for (int64_t d : row) {
        if (d < 0 || d >= n) return bad("document " + std::to_string(d) + " out of range");
        used += length(d);
      }
      if (used >= sequence_len) return bad("an open row is full");
    }
    return Status::ok_status();
  }

  PackedRow build(const std::vector<int64_t>& row_docs, int64_t epoch, int64_t index) const {
    PackedRow row;
    row.epoch = epoch;
    row.index = index;
    const size_t len = static_cast<size_t>(sequence_len);
    row.input_ids.reserve(len);
    row.labels.reserve(len);
    row.position_ids.reserve(len);
    for (int64_t d : row_docs) {
      const Document& doc = (*docs)[static_cast<size_t>(d)];
      row.input_ids.insert(row.input_ids.end(), doc.input_ids.begin(), doc.input_ids.end());
      row.labels.insert(row.labels.end(), doc.labels.begin(), doc.labels.end());
      for (size_t i = 0; i < doc.input_ids.size(); ++i) row.position_ids.push_back(static_cast<int32_t>(i));
      row.doc_lens.push_back(static_cast<int32_t>(doc.input_ids.size()));
    }
    for (int32_t p = 0; row.input_ids.size() < len; ++p) {
      row.input_ids.push_back(pad_id);
      row.labels.push_back(kIgnoreLabel);
      row.position_ids.push_back(p);
    }
    return row;
  }
};

namespace {

std::string fingerprint(const TokenizedDataset& dataset, DataSplit split, const StreamOptions& options) {
  detail::Fnv1a64 h;
  h.str("cairn-stream-v1");
  h.str(dataset.digest);
  h.u64(static_cast<uint64_t>(split));
  h.u64(static_cast<uint64_t>(dataset.sequence_len));
  h.u64(options.sample_packing);
  h.u64(options.sample_packing ? static_cast<uint64_t>(options.packing_window) : 0);
  h.u64(options.shuffle);
  h.u64(options.shuffle ? options.seed : 0);
  h.u64(static_cast<uint64_t>(options.num_shards));
  h.u64(static_cast<uint64_t>(options.shard_index));
  return h.hex();
}

}  // namespace

std::string DataCursor::to_json() const {
  nlohmann::json j = {{"version", 1},           {"epoch", epoch},         {"next_document", next_document},
                      {"next_row", next_row},   {"open_rows", open_rows}, {"fingerprint", fingerprint}};
  return j.dump();
}

Result<DataCursor> DataCursor::from_json(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [](const std::string& what) { return error(Code::invalid_argument, "data cursor: " + what); };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("version") || j["version"] != 1) return bad("\"version\" must be 1");
  DataCursor cursor;
  for (auto [name, field] : {std::pair<const char*, int64_t*>{"epoch", &cursor.epoch},
                             {"next_document", &cursor.next_document},
                             {"next_row", &cursor.next_row}}) {
    if (!j.contains(name) || !j[name].is_number_integer()) return bad(std::string("\"") + name + "\" must be an integer");
    *field = j[name].get<int64_t>();
  }
  if (!j.contains("fingerprint") || !j["fingerprint"].is_string()) return bad("\"fingerprint\" must be a string");
  cursor.fingerprint = j["fingerprint"].get<std::string>();
  if (!j.contains("open_rows") || !j["open_rows"].is_array()) return bad("\"open_rows\" must be an array");
  for (const auto& row : j["open_rows"]) {
    if (!row.is_array()) return bad("\"open_rows\" must be an array of arrays of integers");
    std::vector<int64_t> docs;
    for (const auto& d : row) {
      if (!d.is_number_integer()) return bad("\"open_rows\" must be an array of arrays of integers");
      docs.push_back(d.get<int64_t>());
    }
    cursor.open_rows.push_back(std::move(docs));
  }
  return cursor;
}

Result<BatchStream> BatchStream::create(const TokenizedDataset& dataset, DataSplit split, const StreamOptions& options,
                                        const DataCursor* resume) {
  const auto& docs = split == DataSplit::train ? dataset.train : dataset.val;
  if (docs == nullptr) return error(Code::invalid_argument, "data stream: the dataset has not been loaded");
  if (options.num_shards < 1 || options.shard_index < 0 || options.shard_index >= options.num_shards) {
    return error(Code::invalid_argument, "data stream: shard_index " + std::to_string(options.shard_index) +
                                             " of num_shards " + std::to_string(options.num_shards) + " is out of range");
  }
  if (options.packing_window < 1) {
    return error(Code::invalid_argument,
                 "data stream: packing_window must be at least 1, not " + std::to_string(options.packing_window));
  }
  if (options.num_epochs < 0) {
    return error(Code::invalid_argument, "data stream: num_epochs must be >= 0, not " + std::to_string(options.num_epochs));
  }
  for (const Document& doc : *docs) {
    if (doc.input_ids.empty() || doc.input_ids.size() > static_cast<size_t>(dataset.sequence_len) ||
        doc.labels.size() != doc.input_ids.size()) {
      return error(Code::invalid_argument, "data stream: a document is empty, longer than sequence_len, or has "
                                           "labels of another length");
    }
  }
  auto state = std::make_shared<State>();
  state->docs = docs;
  state->options = options;
  state->sequence_len = dataset.sequence_len;
  state->pad_id = dataset.pad_id;
  state->fingerprint = fingerprint(dataset, split, options);
  if (resume != nullptr) {
    CAIRN_RETURN_IF_ERROR(state->check(*resume));
    state->packer.epoch = resume->epoch;
    state->packer.position = resume->next_document;
    for (const auto& row : resume->open_rows) {
      OpenRow open{row, 0};
      for (int64_t d : row) open.used += state->length(d);
      state->packer.open.push_back(std::move(open));
    }
    state->next_row = resume->next_row;
  }
  return BatchStream(std::move(state));
}

std::optional<PackedRow> BatchStream::next() {
  State& s = *state_;
  if (s.docs->empty()) return std::nullopt;
  while (s.options.num_epochs == 0 || s.packer.epoch < s.options.num_epochs) {
    std::optional<std::vector<int64_t>> row = s.close_next_in_epoch(s.packer);
    if (!row) {
      ++s.packer.epoch;
      s.packer.position = 0;
      continue;
    }
    const int64_t index = s.next_row++;
    if (index % s.options.num_shards == s.options.shard_index) return s.build(*row, s.packer.epoch, index);
  }
  return std::nullopt;
}

DataCursor BatchStream::cursor() const {
  DataCursor cursor;
  cursor.epoch = state_->packer.epoch;
  cursor.next_document = state_->packer.position;
  cursor.next_row = state_->next_row;
  for (const OpenRow& row : state_->packer.open) cursor.open_rows.push_back(row.docs);
  cursor.fingerprint = state_->fingerprint;
  return cursor;
}

int64_t BatchStream::rows_in_epoch(int64_t epoch) const {
  PackerState s;
  s.epoch = epoch;
  int64_t rows = 0;
  while (state_->close_next_in_epoch(s)) ++rows;
  return rows;
}

}  // namespace cairn

// The wire codec and the protocol envelope: what untrusted bytes can and cannot do.
#include <gtest/gtest.h>

#include "runtime/messages/node.h"
#include "runtime/protocol.h"
#include "runtime/wire.h"

namespace cairn {
namespace {

struct Inner {
  std::string label;
  std::vector<int32_t> values;
  template <class V>
  void fields(V& v) {
    v("label", label);
    v.optional("values", values);
  }
};

struct Sample {
  uint32_t count = 0;
  int64_t offset = 0;
  double ratio = 0;
  bool flag = false;
  std::string name;
  wire::Bytes blob;
  wire::Raw anything;
  std::optional<std::string> maybe;
  std::map<std::string, uint64_t> table;
  std::vector<Inner> items;
  template <class V>
  void fields(V& v) {
    v("count", count);
    v.optional("offset", offset);
    v.optional("ratio", ratio);
    v.optional("flag", flag);
    v("name", name);
    v.optional("blob", blob);
    v.optional("anything", anything);
    v.optional("maybe", maybe);
    v.optional("table", table);
    v.optional("items", items);
  }
};

// Packs an arbitrary map with msgpack's own packer, as a foreign client would.
template <class F>
std::string pack_map(uint32_t size, F&& body) {
  std::string out;
  wire::AppendBuffer buffer{&out};
  wire::Packer pk(buffer);
  pk.pack_map(size);
  body(pk);
  return out;
}

template <class T>
Result<T> decode_text(const std::string& bytes) {
  return wire::decode_bytes<T>(bytes);
}

TEST(Wire, RoundTripsEveryFieldKind) {
  Sample in;
  in.count = 7;
  in.offset = -42;
  in.ratio = 0.25;
  in.flag = true;
  in.name = "naïve ünïcode";
  in.blob.data = std::string("\0\x01\xff", 3);
  in.anything.bytes = wire::encode(std::vector<std::string>{"a", "b"});
  in.maybe = "here";
  in.table = {{"x", 1}, {"y", 2}};
  in.items = {Inner{"first", {1, -2}}, Inner{"second", {}}};
  auto out = decode_text<Sample>(wire::encode(in));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->count, 7u);
  EXPECT_EQ(out->offset, -42);
  EXPECT_DOUBLE_EQ(out->ratio, 0.25);
  EXPECT_TRUE(out->flag);
  EXPECT_EQ(out->name, in.name);
  EXPECT_EQ(out->blob, in.blob);
  EXPECT_EQ(out->anything, in.anything);
  EXPECT_EQ(out->maybe, in.maybe);
  EXPECT_EQ(out->table, in.table);
  ASSERT_EQ(out->items.size(), 2u);
  EXPECT_EQ(out->items[0].values, (std::vector<int32_t>{1, -2}));
}

TEST(Wire, EmptyOptionalIsLeftOutOfTheMap) {
  Sample s;
  s.name = "n";
  auto encoded = wire::encode(s);
  auto decoded = wire::unpack_map(encoded.data(), encoded.size());
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(wire::find_key(decoded->get(), "maybe"), nullptr);
  EXPECT_NE(wire::find_key(decoded->get(), "name"), nullptr);
}

TEST(Wire, MissingRequiredFieldIsNamed) {
  auto bytes = pack_map(1, [](wire::Packer& pk) {
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
  });
  auto out = decode_text<Sample>(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), Code::bad_request);
  EXPECT_EQ(out.status().message(), "field \"count\" is missing");
}

TEST(Wire, WrongTypeIsNamedWithWhatWasExpected) {
  auto bytes = pack_map(2, [](wire::Packer& pk) {
    pk.pack(std::string("count"));
    pk.pack(std::string("seven"));
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
  });
  auto out = decode_text<Sample>(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "field \"count\": expected a non-negative integer, got a string");
}

TEST(Wire, NestedErrorsCarryTheirPath) {
  auto bytes = pack_map(3, [](wire::Packer& pk) {
    pk.pack(std::string("count"));
    pk.pack(1);
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
    pk.pack(std::string("items"));
    pk.pack_array(2);
    pk.pack_map(1);
    pk.pack(std::string("label"));
    pk.pack(std::string("ok"));
    pk.pack_map(1);
    pk.pack(std::string("label"));
    pk.pack(17);
  });
  auto out = decode_text<Sample>(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "field \"items[1].label\": expected a string, got an integer");
}

TEST(Wire, IntegersAreRangeChecked) {
  auto too_big = pack_map(2, [](wire::Packer& pk) {
    pk.pack(std::string("count"));
    pk.pack(uint64_t{1} << 40);
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
  });
  auto out = decode_text<Sample>(too_big);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("out of range"), std::string::npos);
  auto negative = pack_map(2, [](wire::Packer& pk) {
    pk.pack(std::string("count"));
    pk.pack(-1);
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
  });
  out = decode_text<Sample>(negative);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("non-negative"), std::string::npos);
}

TEST(Wire, UnknownKeysAreIgnored) {
  auto bytes = pack_map(3, [](wire::Packer& pk) {
    pk.pack(std::string("count"));
    pk.pack(3);
    pk.pack(std::string("name"));
    pk.pack(std::string("x"));
    pk.pack(std::string("from_the_future"));
    pk.pack(std::vector<int>{1, 2, 3});
  });
  auto out = decode_text<Sample>(bytes);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->count, 3u);
}

TEST(Wire, UnpackRejectsWhatIsNotOneMap) {
  EXPECT_EQ(wire::unpack_map("\x93\x01\x02\x03", 4).status().code(), Code::bad_frame);  // an array
  EXPECT_EQ(wire::unpack_map("\x80\x80", 2).status().code(), Code::bad_frame);          // trailing bytes
  EXPECT_EQ(wire::unpack_map("\x82\xa1", 2).status().code(), Code::bad_frame);          // truncated
  EXPECT_EQ(wire::unpack_map("\xc1", 1).status().code(), Code::bad_frame);              // never-used byte
}

TEST(Wire, HeadersCannotAskForMoreThanTheFrameHolds) {
  // A map32 header claiming 4 billion entries, in a 5-byte frame: refused without allocating.
  const char map32[] = "\xdf\xff\xff\xff\xff";
  auto out = wire::unpack_map(map32, 5);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), Code::bad_frame);
  // A str32 that claims 256 MB inside a small map.
  const char str32[] = "\x81\xa1k\xdb\x10\x00\x00\x00";
  out = wire::unpack_map(str32, 8);
  ASSERT_FALSE(out.ok());
}

TEST(Wire, DeepNestingIsRefused) {
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "\x81\xa1k";
  deep += "\x80";
  auto out = wire::unpack_map(deep.data(), deep.size());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), Code::bad_frame);
}

TEST(Protocol, LengthPrefixIsBigEndian) {
  char header[4];
  protocol::write_length(header, 0x01020304);
  EXPECT_EQ(header[0], 1);
  EXPECT_EQ(header[3], 4);
  EXPECT_EQ(protocol::read_length(header), 0x01020304u);
}

TEST(Protocol, RequestFrameMatchesTheDocumentedBytes) {
  std::string frame;
  protocol::append_request(frame, 1, "node.ping", {});
  const std::string expected("\x00\x00\x00\x12\x82\xa2id\x01\xa2op\xa9node.ping", 22);
  EXPECT_EQ(frame, expected);
}

TEST(Protocol, RequestEnvelopeIsValidated) {
  auto parse = [](const std::string& body, uint64_t& id) {
    auto handle = wire::unpack_map(body.data(), body.size());
    EXPECT_TRUE(handle.ok());
    auto request = protocol::parse_request(handle->get(), id);
    return request.ok() ? Status() : request.status();
  };
  uint64_t id = 99;
  auto no_op = pack_map(1, [](wire::Packer& pk) {
    pk.pack(std::string("id"));
    pk.pack(5);
  });
  Status s = parse(no_op, id);
  EXPECT_EQ(s.code(), Code::bad_request);
  EXPECT_EQ(s.message(), "request has no \"op\"");
  EXPECT_EQ(id, 5u) << "the error can still name the request";

  auto string_id = pack_map(2, [](wire::Packer& pk) {
    pk.pack(std::string("id"));
    pk.pack(std::string("five"));
    pk.pack(std::string("op"));
    pk.pack(std::string("node.ping"));
  });
  s = parse(string_id, id);
  EXPECT_EQ(s.message(), "field \"id\": expected a non-negative integer, got a string");
  EXPECT_EQ(id, protocol::kConnectionId);

  auto array_body = pack_map(3, [](wire::Packer& pk) {
    pk.pack(std::string("id"));
    pk.pack(2);
    pk.pack(std::string("op"));
    pk.pack(std::string("node.echo"));
    pk.pack(std::string("body"));
    pk.pack_array(0);
  });
  s = parse(array_body, id);
  EXPECT_EQ(s.message(), "field \"body\": expected a map, got an array");
}

TEST(Protocol, RepliesRoundTrip) {
  std::string frames;
  protocol::append_reply(frames, 3, protocol::ReplyKind::more, wire::encode(msg::KillActor{"echo"}));
  protocol::append_error(frames, 4, Status(Code::permission_denied, "needs admin"));
  size_t first = protocol::kHeaderBytes + protocol::read_length(frames.data());
  auto h1 = wire::unpack_map(frames.data() + 4, first - 4);
  ASSERT_TRUE(h1.ok());
  auto r1 = protocol::parse_reply(h1->get());
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->id, 3u);
  EXPECT_EQ(r1->kind, protocol::ReplyKind::more);
  ASSERT_NE(r1->body, nullptr);
  EXPECT_EQ(wire::decode<msg::KillActor>(*r1->body)->name, "echo");

  auto h2 = wire::unpack_map(frames.data() + first + 4, frames.size() - first - 4);
  ASSERT_TRUE(h2.ok());
  auto r2 = protocol::parse_reply(h2->get());
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->kind, protocol::ReplyKind::error);
  EXPECT_EQ(r2->error.code(), Code::permission_denied);
  EXPECT_EQ(r2->error.message(), "needs admin");
}

TEST(Status, CodeNamesAreStableAndRoundTrip) {
  EXPECT_EQ(code_name(Code::bad_request), "bad_request");
  EXPECT_EQ(code_name(Code::frame_too_large), "frame_too_large");
  for (int i = 0; i <= static_cast<int>(Code::internal); ++i) {
    auto code = static_cast<Code>(i);
    EXPECT_EQ(code_from_name(code_name(code)), code);
  }
  EXPECT_FALSE(code_from_name("no_such_code").has_value());
}

}  // namespace
}  // namespace cairn

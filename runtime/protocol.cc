#include "runtime/protocol.h"

namespace cairn::protocol {
namespace {

void pack_key(wire::Packer& pk, std::string_view key) {
  pk.pack_str(static_cast<uint32_t>(key.size()));
  pk.pack_str_body(key.data(), static_cast<uint32_t>(key.size()));
}

std::string_view as_string(const msgpack::object& obj) {
  return {obj.via.str.ptr, obj.via.str.size};
}

}  // namespace

std::string_view reply_kind_name(ReplyKind kind) {
  switch (kind) {
    case ReplyKind::ok: return "ok";
    case ReplyKind::more: return "more";
    case ReplyKind::error: return "error";
  }
  return "error";
}

uint32_t read_length(const char* data) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void write_length(char* out, uint32_t length) {
  out[0] = static_cast<char>((length >> 24) & 0xff);
  out[1] = static_cast<char>((length >> 16) & 0xff);
  out[2] = static_cast<char>((length >> 8) & 0xff);
  out[3] = static_cast<char>(length & 0xff);
}

FrameBuilder::FrameBuilder(std::string& out)
    : out_(out), start_(out.size()), buffer_{&out}, packer_(buffer_) {
  out_.append(kHeaderBytes, '\0');
}

size_t FrameBuilder::finish() {
  size_t body = out_.size() - start_ - kHeaderBytes;
  write_length(&out_[start_], static_cast<uint32_t>(body));
  return body;
}

Result<Request> parse_request(const msgpack::object& frame, uint64_t& id_out) {
  id_out = kConnectionId;
  Request request;
  const msgpack::object* id = wire::find_key(frame, "id");
  if (id == nullptr) return Status(Code::bad_request, "request has no \"id\"");
  if (id->type != msgpack::type::POSITIVE_INTEGER) {
    return Status(Code::bad_request,
                  "field \"id\": expected a non-negative integer, got " + std::string(wire::type_name(*id)));
  }
  request.id = id->via.u64;
  id_out = request.id;
  const msgpack::object* op = wire::find_key(frame, "op");
  if (op == nullptr) return Status(Code::bad_request, "request has no \"op\"");
  if (op->type != msgpack::type::STR) {
    return Status(Code::bad_request, "field \"op\": expected a string, got " + std::string(wire::type_name(*op)));
  }
  request.op = as_string(*op);
  const msgpack::object* body = wire::find_key(frame, "body");
  if (body != nullptr && body->type != msgpack::type::NIL) {
    if (body->type != msgpack::type::MAP) {
      return Status(Code::bad_request, "field \"body\": expected a map, got " + std::string(wire::type_name(*body)));
    }
    request.body = body;
  }
  return request;
}

void append_request(std::string& out, uint64_t id, std::string_view op, std::string_view body) {
  FrameBuilder frame(out);
  auto& pk = frame.packer();
  pk.pack_map(body.empty() ? 2 : 3);
  pack_key(pk, "id");
  pk.pack(id);
  pack_key(pk, "op");
  pack_key(pk, op);
  if (!body.empty()) {
    pack_key(pk, "body");
    pk.write_encoded(body.data(), body.size());
  }
  frame.finish();
}

void append_reply(std::string& out, uint64_t id, ReplyKind kind, std::string_view body) {
  FrameBuilder frame(out);
  auto& pk = frame.packer();
  pk.pack_map(body.empty() ? 2 : 3);
  pack_key(pk, "id");
  pk.pack(id);
  pack_key(pk, "status");
  pack_key(pk, reply_kind_name(kind));
  if (!body.empty()) {
    pack_key(pk, "body");
    pk.write_encoded(body.data(), body.size());
  }
  frame.finish();
}

void append_error(std::string& out, uint64_t id, const Status& status) {
  FrameBuilder frame(out);
  auto& pk = frame.packer();
  pk.pack_map(3);
  pack_key(pk, "id");
  pk.pack(id);
  pack_key(pk, "status");
  pack_key(pk, "error");
  pack_key(pk, "error");
  pk.pack_map(2);
  pack_key(pk, "code");
  pack_key(pk, code_name(status.code()));
  pack_key(pk, "message");
  pack_key(pk, status.message());
  frame.finish();
}

Result<Reply> parse_reply(const msgpack::object& frame) {
  Reply reply;
  const msgpack::object* id = wire::find_key(frame, "id");
  if (id == nullptr || id->type != msgpack::type::POSITIVE_INTEGER) {
    return Status(Code::bad_frame, "reply has no integer \"id\"");
  }
  reply.id = id->via.u64;
  const msgpack::object* status = wire::find_key(frame, "status");
  if (status == nullptr || status->type != msgpack::type::STR) {
    return Status(Code::bad_frame, "reply has no string \"status\"");
  }
  std::string_view kind = as_string(*status);
  if (kind == "ok") {
    reply.kind = ReplyKind::ok;
  } else if (kind == "more") {
    reply.kind = ReplyKind::more;
  } else if (kind == "error") {
    reply.kind = ReplyKind::error;
    const msgpack::object* err = wire::find_key(frame, "error");
    const msgpack::object* code = err ? wire::find_key(*err, "code") : nullptr;
    const msgpack::object* message = err ? wire::find_key(*err, "message") : nullptr;
    if (code == nullptr || code->type != msgpack::type::STR) {
      return Status(Code::bad_frame, "error reply has no string \"error.code\"");
    }
    std::string text = message && message->type == msgpack::type::STR ? std::string(as_string(*message)) : "";
    // A code this build does not know yet still reaches the caller, by name, in the message.
    auto known = code_from_name(as_string(*code));
    reply.error = known ? Status(*known, text) : Status(Code::internal, std::string(as_string(*code)) + ": " + text);
  } else {
    return Status(Code::bad_frame, "reply has unknown status \"" + std::string(kind) + "\"");
  }
  const msgpack::object* body = wire::find_key(frame, "body");
  if (body != nullptr && body->type != msgpack::type::NIL) reply.body = body;
  return reply;
}

}  // namespace cairn::protocol

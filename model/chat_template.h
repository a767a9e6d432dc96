// Chat templates: the Jinja templates that Hugging Face tokenizers carry in tokenizer_config.json
// to turn a conversation into text. Rendered by a small interpreter of the Jinja subset that real
// chat templates use (ChatML, Llama 3, Mistral, Zephyr and the like); model/detail/data_jinja.h
// lists what is supported. Rendering follows transformers' apply_chat_template: trim_blocks and
// lstrip_blocks on, and the variables messages, bos_token, eos_token and add_generation_prompt.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/status.h"

namespace cairn {

namespace detail::jinja {
class Template;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// The variables of a render besides `messages`.
struct ChatTemplateVars {
  std::string bos_token;  // the text of the tokenizer's begin-of-sequence token; "" if none
  std::string eos_token;  // the text of its end-of-sequence token; "" if none
  bool add_generation_prompt = false;  // end with the header of an assistant turn
};

// A parsed chat template. Immutable; copies are cheap and share the parse; render() may be called
// from several threads at once.
class ChatTemplate {
 public:
  // Parses Jinja source. invalid_argument "chat template: line L, column C: <problem>" for a syntax
  // error or a construct outside the supported subset (e.g. "unsupported tag 'macro'").
  static Result<ChatTemplate> parse(const std::string& source);

  // The conversation as text. invalid_argument "chat template: line L, column C: <problem>" when
  // rendering fails: raise_exception(msg) in the template (problem "raised: msg"), a type error, or
  // an undefined value used as an object.
  Result<std::string> render(const std::vector<ChatMessage>& messages, const ChatTemplateVars& vars) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(std::string source, std::shared_ptr<const detail::jinja::Template> impl)
      : source_(std::move(source)), impl_(std::move(impl)) {}

  std::string source_;
  std::shared_ptr<const detail::jinja::Template> impl_;  // never null
};

// The ChatML template, as Axolotl ships it: "<|im_start|>{role}\n{content}<|im_end|>\n" per
// message, and "<|im_start|>assistant\n" as the generation prompt.
std::string_view chatml_template();

// The chat template of a tokenizer: "chat_template" in the tokenizer_config.json beside
// `tokenizer_path_or_dir` (a tokenizer.json or its directory), a string or, in newer files, a list
// of {name, template} from which "default" (else the first) is taken. ChatML when the file or the
// key is absent. io_error when the file cannot be read, invalid_argument when it is malformed; both
// name the file.
Result<std::string> load_chat_template(const std::string& tokenizer_path_or_dir);

}  // namespace cairn

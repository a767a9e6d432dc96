#include "model/chat_template.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "model/detail/data_jinja.h"
#include "model/detail/files.h"

namespace cairn {

namespace jinja = detail::jinja;

Result<ChatTemplate> ChatTemplate::parse(const std::string& source) {
  Result<jinja::Template> parsed = jinja::Template::parse(source);
  if (!parsed.ok()) return parsed.status().with_context("chat template");
  auto impl = std::make_shared<const jinja::Template>(std::move(parsed).value());
  return ChatTemplate(source, std::move(impl));
}

Result<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                         const ChatTemplateVars& vars) const {
  jinja::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    list.push_back(jinja::Value::from(jinja::Dict{{"role", jinja::Value::from(m.role)},
                                                  {"content", jinja::Value::from(m.content)}}));
  }
  jinja::Dict globals = {
      {"messages", jinja::Value::from(std::move(list))},
      {"bos_token", jinja::Value::from(vars.bos_token)},
      {"eos_token", jinja::Value::from(vars.eos_token)},
      {"add_generation_prompt", jinja::Value::from(vars.add_generation_prompt)},
  };
  Result<std::string> text = impl_->render(globals);
  if (!text.ok()) return text.status().with_context("chat template");
  return text;
}

std::string_view chatml_template() {
  return "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}

Result<std::string> load_chat_template(const std::string& tokenizer_path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::is_directory(tokenizer_path_or_dir, ec) ? fs::path(tokenizer_path_or_dir)
                                                             : fs::path(tokenizer_path_or_dir).parent_path();
  fs::path config_path = dir / "tokenizer_config.json";
  if (!fs::exists(config_path, ec)) return std::string(chatml_template());
  Result<std::string> text = detail::read_file(config_path.string());
  if (!text.ok()) return text.status();
  nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return error(Code::invalid_argument, config_path.string() + ": not a JSON object");
  }
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::string(chatml_template());
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    const nlohmann::json* chosen = nullptr;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("template") || !entry["template"].is_string()) {
        return error(Code::invalid_argument,
                     config_path.string() + ": chat_template entries must be {name, template} objects");
      }
      if (chosen == nullptr || (entry.contains("name") && entry["name"] == "default")) chosen = &entry;
    }
    if (chosen != nullptr) return (*chosen)["template"].get<std::string>();
    return std::string(chatml_template());
  }
  return error(Code::invalid_argument, config_path.string() + ": chat_template must be a string or a list");
}

}  // namespace cairn

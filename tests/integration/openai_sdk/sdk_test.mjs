// The official `openai` npm SDK (6.x) against a running node: list models, completion and chat,
// both streamed and not, usage counts, and an error in OpenAI's shape. Run by run.sh, which starts
// the node and passes CAIRN_OPENAI_URL and CAIRN_TOKEN.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.CAIRN_OPENAI_URL, apiKey: process.env.CAIRN_TOKEN, maxRetries: 0 });

const models = await client.models.list();
assert.ok(models.data.some((m) => m.id === 'tiny'), `tiny is listed: ${JSON.stringify(models.data)}`);

// Completions: streamed text equals the non-streamed text for the same greedy request.
const request = { model: 'tiny', prompt: 'The quick brown fox', max_tokens: 12, temperature: 0 };
const completion = await client.completions.create(request);
assert.equal(completion.object, 'text_completion');
assert.equal(typeof completion.choices[0].text, 'string');
assert.ok(['stop', 'length'].includes(completion.choices[0].finish_reason));
assert.ok(completion.usage.prompt_tokens > 0 && completion.usage.completion_tokens > 0);
let streamed = '';
let finish = null;
for await (const chunk of await client.completions.create({ ...request, stream: true })) {
  if (chunk.choices.length === 0) continue;
  streamed += chunk.choices[0].text;
  finish = chunk.choices[0].finish_reason ?? finish;
}
assert.equal(streamed, completion.choices[0].text);
assert.equal(finish, completion.choices[0].finish_reason);

// Chat: the same, with usage in the stream.
const chatRequest = {
  model: 'tiny',
  messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello' }],
  max_tokens: 10,
  temperature: 0,
};
const chat = await client.chat.completions.create(chatRequest);
assert.equal(chat.object, 'chat.completion');
assert.equal(chat.choices[0].message.role, 'assistant');
assert.equal(typeof chat.choices[0].message.content, 'string');
let content = '';
let usage = null;
let role = null;
for await (const chunk of await client.chat.completions.create({ ...chatRequest, stream: true, stream_options: { include_usage: true } })) {
  if (chunk.usage) usage = chunk.usage;
  if (chunk.choices.length === 0) continue;
  role = chunk.choices[0].delta.role ?? role;
  content += chunk.choices[0].delta.content ?? '';
}
assert.equal(role, 'assistant');
assert.equal(content, chat.choices[0].message.content);
assert.ok(usage && usage.completion_tokens === chat.usage.completion_tokens, `usage ${JSON.stringify(usage)}`);

// Errors: an unknown model is a 404 NotFoundError with OpenAI's fields.
await assert.rejects(client.completions.create({ ...request, model: 'no-such-model' }), (error) => {
  assert.ok(error instanceof OpenAI.NotFoundError, String(error));
  assert.equal(error.status, 404);
  assert.equal(error.code, 'model_not_found');
  return true;
});
await assert.rejects(client.completions.create({ ...request, max_tokens: 100000 }), (error) => {
  assert.ok(error instanceof OpenAI.BadRequestError, String(error));
  return true;
});
console.log('openai sdk: models, completions, chat, streaming and errors ok');

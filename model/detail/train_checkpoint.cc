#include "model/detail/train_checkpoint.h"

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <utility>

namespace cairn::detail {
namespace {

// What the backward pass needs besides the saved input: the block and the generator state.
struct BlockClosure : torch::CustomClassHolder {
  CheckpointedBlock block;
  at::Device device{at::kCPU};
  at::Tensor rng_state;
  bool input_requires_grad = false;
};

// Runs `f` with the default generator of `device` set to `state`, restoring its own afterwards.
template <class F>
auto with_generator_state(at::Device device, const at::Tensor& state, F&& f) {
  at::Generator generator = at::globalContext().defaultGenerator(device);
  at::Tensor own = generator.get_state();
  generator.set_state(state);
  struct Restore {
    at::Generator& generator;
    at::Tensor& own;
    ~Restore() { generator.set_state(own); }
  } restore{generator, own};
  return f();
}

// Inputs: the block's input, and an anchor that requires grad, so the output requires grad (and
// this node's backward runs) even when the input does not, e.g. the first layer of a LoRA model
// whose embeddings are frozen. The anchor gets no gradient.
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& anchor,
                            c10::intrusive_ptr<BlockClosure> closure) {
    (void)anchor;
    closure->rng_state = at::globalContext().defaultGenerator(closure->device).get_state();
    at::Tensor output = closure->block(input);
    ctx->save_for_backward({input});
    ctx->saved_data["closure"] = c10::IValue::make_capsule(closure);
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto closure = c10::static_intrusive_pointer_cast<BlockClosure>(ctx->saved_data["closure"].toCapsule());
    at::Tensor input = ctx->get_saved_variables()[0].detach();
    input.requires_grad_(closure->input_requires_grad);
    at::Tensor output;
    {
      at::AutoGradMode grad_mode(true);
      output = with_generator_state(closure->device, closure->rng_state, [&] { return closure->block(input); });
    }
    if (output.requires_grad() && grad_outputs[0].defined()) {
      torch::autograd::backward({output}, {grad_outputs[0]});
    }
    at::Tensor input_grad = closure->input_requires_grad ? input.grad() : at::Tensor();
    return {input_grad, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed(CheckpointedBlock block, const at::Tensor& input, at::Device device) {
  auto closure = c10::make_intrusive<BlockClosure>();
  closure->block = std::move(block);
  closure->device = device;
  closure->input_requires_grad = input.requires_grad();
  // A leaf that requires grad; its (undefined) gradient is dropped by the engine.
  at::Tensor anchor = at::empty({0}, input.options().dtype(at::kFloat)).requires_grad_(true);
  return CheckpointFunction::apply(input, anchor, closure);
}

}  // namespace cairn::detail

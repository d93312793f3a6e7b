/* The CPU implementations of the spikeloc:: operators (schemas, fake tensors and autograd in ops.py).
 *
 * ltc_cell / ltc_cell_backward: the LTC-SN conv cell from its convolution's output (batch norm, the tau
 * convolution, batch norm', sigmoid, the LTC update, spike and reset) and its backward, the kernels of
 * ltc_cell.cpp around torch's convolution; fptt_stage / fptt_penalty: FPTT's staged update and its penalty
 * (fptt.cpp); nhwc_to_nchw: a
 * layout change (layout.cpp). Tensors: contiguous float32 on the CPU.
 */
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <vector>

#include "kernels.h"

using at::Tensor;

namespace {

const float *ptr(const Tensor &t) { return t.data_ptr<float>(); }
float *mut(Tensor &t) { return t.data_ptr<float>(); }
const float *optional_ptr(const c10::optional<Tensor> &t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

void check_cpu_float(const Tensor &t, const char *name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "spikeloc kernels: ", name,
                " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

/* [N, C, HW] of a batch-first tensor. */
std::tuple<int64_t, int64_t, int64_t> dims(const Tensor &t) {
    int64_t n = t.size(0), c = t.size(1);
    return {n, c, n * c ? t.numel() / (n * c) : 0};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ltc_cell(
        const Tensor &cur_in, const Tensor &u_in, const Tensor &w1, const Tensor &b1, const Tensor &tau_weight,
        const Tensor &w2, const Tensor &b2, const Tensor &mean1_in, const Tensor &var1_in, const Tensor &mean2_in,
        const Tensor &var2_in, bool batch_stats, double eps1, double eps2, double threshold, bool hard,
        int64_t padding, at::ArrayRef<double> /* surrogate: for the backward */) {
    check_cpu_float(cur_in, "the current");
    Tensor cur = cur_in.contiguous(), u = u_in.contiguous();
    auto [N, C, HW] = dims(cur);
    int threads = at::get_num_threads();
    Tensor a = at::empty_like(cur), mean1 = mean1_in.clone(), var1 = var1_in.clone(), rstd1 = at::empty_like(mean1);
    ltc_input_forward(ptr(cur), ptr(u), ptr(w1), ptr(b1), N, C, HW, batch_stats, (float)eps1, mut(mean1), mut(var1),
                      mut(rstd1), mut(a), threads);
    Tensor t = at::conv2d(a, tau_weight, {}, {1, 1}, {padding, padding}).contiguous();
    Tensor spike = at::empty_like(cur), u_next = at::empty_like(cur), mean2 = mean2_in.clone();
    Tensor var2 = var2_in.clone(), rstd2 = at::empty_like(mean2);
    ltc_tau_forward(ptr(cur), ptr(u), ptr(t), ptr(w1), ptr(b1), ptr(mean1), ptr(rstd1), ptr(w2), ptr(b2), N, C, HW,
                    batch_stats, (float)eps2, (float)threshold, hard, mut(mean2), mut(var2), mut(rstd2), mut(spike),
                    mut(u_next), threads);
    return {spike, u_next, mean1, var1, mean2, var2, a, t, rstd1, rstd2};
}

/* Gradients of (cur, u, w1, b1, tau_weight, w2, b2); grad_u is empty unless need_u. The backward's own
 * temporaries are reused for its outputs (grad_cur in grad_u1's memory, grad_u in grad_a's). */
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ltc_cell_backward(
        const c10::optional<Tensor> &grad_spike_in, const c10::optional<Tensor> &grad_next_in, const Tensor &cur_in,
        const Tensor &u_in, const Tensor &a, const Tensor &t_in, const Tensor &tau_weight, const Tensor &w1,
        const Tensor &b1, const Tensor &w2, const Tensor &b2, const Tensor &mean1, const Tensor &rstd1,
        const Tensor &mean2, const Tensor &rstd2, bool batch_stats, double threshold, bool hard, int64_t padding,
        bool need_u, at::ArrayRef<double> surrogate) {
    TORCH_CHECK(surrogate.size() == 5, "ltc_cell_backward: surrogate takes (c0, c1, k0, k1, sigma)");
    auto contiguous = [](const c10::optional<Tensor> &g) {
        return g.has_value() ? c10::optional<Tensor>(g->contiguous()) : c10::optional<Tensor>();
    };
    c10::optional<Tensor> grad_spike = contiguous(grad_spike_in), grad_next = contiguous(grad_next_in);
    Tensor cur = cur_in.contiguous(), u = u_in.contiguous(), t = t_in.contiguous();
    auto [N, C, HW] = dims(cur);
    int threads = at::get_num_threads();
    surrogate_t g = {(float)surrogate[0], (float)surrogate[1], (float)surrogate[2], (float)surrogate[3],
                     (float)surrogate[4]};
    Tensor grad_u1 = at::empty_like(cur), grad_t = at::empty_like(cur);
    Tensor grad_w2 = at::empty_like(w2), grad_b2 = at::empty_like(b2);
    ltc_tau_backward(ptr(cur), ptr(u), ptr(t), optional_ptr(grad_spike), optional_ptr(grad_next), ptr(w1), ptr(b1),
                     ptr(mean1), ptr(rstd1), ptr(w2), ptr(b2), ptr(mean2), ptr(rstd2), N, C, HW, batch_stats,
                     (float)threshold, hard, !need_u, g, mut(grad_u1), mut(grad_t), mut(grad_w2), mut(grad_b2),
                     threads);
    auto [grad_a_raw, grad_tau_weight, unused] = at::convolution_backward(
        grad_t, a, tau_weight, c10::nullopt, {1, 1}, {padding, padding}, {1, 1}, false, {0, 0}, 1,
        {true, true, false});
    Tensor grad_a = grad_a_raw.contiguous();
    Tensor grad_w1 = at::empty_like(w1), grad_b1 = at::empty_like(w1);
    Tensor grad_u = need_u ? grad_a : cur.new_empty({0});
    ltc_input_backward(ptr(cur), ptr(t), ptr(grad_u1), ptr(grad_a), ptr(w1), ptr(mean1), ptr(rstd1), ptr(w2),
                       ptr(b2), ptr(mean2), ptr(rstd2), N, C, HW, batch_stats, need_u ? mut(grad_u) : nullptr,
                       mut(grad_u1), mut(grad_w1), mut(grad_b1), threads);
    return {grad_u1, grad_u, grad_w1, grad_b1, grad_tau_weight, grad_w2, grad_b2};
}

/* The weights' data pointers and sizes (each dense, float32 on the CPU), checking the flat state against them,
 * and one gradient per weight, laid out like it (fresh tensors: autograd may keep them as .grad). */
struct Weights {
    std::vector<const float *> pointers;
    std::vector<int64_t> numels;
    std::vector<Tensor> grads;
    std::vector<float *> grad_pointers;

    Weights(at::TensorList weights, std::initializer_list<const Tensor *> state) {
        int64_t total = 0;
        for (const Tensor &w : weights) {
            check_cpu_float(w, "a weight");
            TORCH_CHECK(w.is_non_overlapping_and_dense(), "fptt: every weight must be dense in memory");
            pointers.push_back(ptr(w));
            numels.push_back(w.numel());
            grads.push_back(at::empty_like(w));
            grad_pointers.push_back(mut(grads.back()));
            total += w.numel();
        }
        for (const Tensor *t : state) {
            check_cpu_float(*t, "the FPTT state");
            TORCH_CHECK(t->is_contiguous() && t->numel() == total, "fptt: the state must be flat, one value per "
                        "weight element");
        }
    }
};

/* new_bar and new_lam (written in place) from the weights and the flat state; returns the next penalty's
 * gradient (one tensor per weight) and value (float64). */
std::tuple<std::vector<Tensor>, Tensor> fptt_stage_op(at::TensorList weights, const Tensor &bar, const Tensor &lam,
                                                       Tensor &new_bar, Tensor &new_lam, double alpha, double beta,
                                                       double update_alpha) {
    Weights w(weights, {&bar, &lam, &new_bar, &new_lam});
    Tensor value = at::empty({}, bar.options().dtype(at::kDouble));
    fptt_stage(w.pointers.data(), w.numels.data(), (int64_t)w.pointers.size(), ptr(bar), ptr(lam), (float)alpha,
               (float)beta, (float)update_alpha, mut(new_bar), mut(new_lam), w.grad_pointers.data(),
               value.data_ptr<double>(), at::get_num_threads());
    return {w.grads, value};
}

/* The penalty's gradient and value of the current state, with fptt_stage's roundings. */
std::tuple<std::vector<Tensor>, Tensor> fptt_penalty_op(at::TensorList weights, const Tensor &bar,
                                                         const Tensor &lam, double alpha) {
    Weights w(weights, {&bar, &lam});
    Tensor value = at::empty({}, bar.options().dtype(at::kDouble));
    fptt_penalty(w.pointers.data(), w.numels.data(), (int64_t)w.pointers.size(), ptr(bar), ptr(lam), (float)alpha,
                 w.grad_pointers.data(), value.data_ptr<double>(), at::get_num_threads());
    return {w.grads, value};
}

/* A channels-last [N, C, H, W] tensor as a contiguous one. */
Tensor nhwc_to_nchw_op(const Tensor &x) {
    check_cpu_float(x, "the input");
    TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), "nhwc_to_nchw: a channels-last "
                "4-D tensor is needed");
    Tensor out = at::empty(x.sizes(), x.options());
    nhwc_to_nchw(ptr(x), mut(out), x.size(0), x.size(1), x.size(2) * x.size(3), at::get_num_threads());
    return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeloc, CPU, m) {
    m.impl("ltc_cell", &ltc_cell);
    m.impl("ltc_cell_backward", &ltc_cell_backward);
    m.impl("fptt_stage", &fptt_stage_op);
    m.impl("fptt_penalty", &fptt_penalty_op);
    m.impl("nhwc_to_nchw", &nhwc_to_nchw_op);
}

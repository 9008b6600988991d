//! Causal softmax attention (FlashAttention-style online softmax): the
//! baseline Lightning Attention is compared with, on the same GPU and API.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::launch::{Io, Launch};
use crate::kernels::pack::Output;
use crate::kernels::softmax;
use crate::layout::Layout;
use crate::ops::forward::ForwardOptions;
use crate::plan::{self, Needs, Starts};
use crate::runtime::recorder::Recorder;
use crate::tensor::Tensor;
use crate::validate;

/// Options of [`Context::softmax_attention`].
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxOptions<'a> {
    /// Multiplies the logits `q_i . k_j`; `None` means `1/sqrt(d)`.
    pub scale: Option<f32>,
    /// Per-head ALiBi slopes: the logit of `(i, j)` gets `-s_h (i - j)`.
    /// `None`: plain causal attention.
    pub alibi: Option<&'a [f32]>,
    /// Layout of q, k, v and o.
    pub layout: Layout,
}

impl Default for SoftmaxOptions<'_> {
    fn default() -> Self {
        SoftmaxOptions {
            scale: None,
            alibi: None,
            layout: Layout::Bhnd,
        }
    }
}

impl Context {
    /// Causal softmax attention,
    /// `o_i = sum_{j <= i} softmax_j(scale q_i . k_j - s_h (i - j)) v_j`,
    /// for comparing with Lightning Attention on the same device. Shapes as
    /// in [`Context::forward`]; each (batch, head) must fit in one storage
    /// binding, since every row needs all the keys before it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn softmax_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &SoftmaxOptions,
    ) -> Result<Tensor> {
        pollster::block_on(self.softmax_attention_async(q, k, v, opts))
    }

    /// Async form of [`Context::softmax_attention`].
    pub async fn softmax_attention_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &SoftmaxOptions<'_>,
    ) -> Result<Tensor> {
        let as_forward = ForwardOptions {
            slopes: opts.alibi,
            layout: opts.layout,
            ..Default::default()
        };
        let call = validate::forward(self, q, k, v, &as_forward)?;
        if call.group > 1 {
            return Err(Error::InvalidValue {
                arg: "k",
                value: format!(
                    "{} heads against q's {}",
                    call.dims.h,
                    call.dims.h * call.group
                ),
                reason: "softmax attention takes q, k and v with the same heads",
            });
        }
        let dims = call.dims;
        let scale = opts.scale.unwrap_or(1.0 / (dims.d as f32).sqrt());
        validate::scale(scale)?;
        let mut rec = Recorder::new(self.rt(), "softmax attention");
        let o = self.new_tensor(v.shape(), v.dtype(), "o")?;
        let output = Output::new(&mut rec, &o)?;
        let mut limits = super::limits(self, q.dtype(), output.element_bytes(), 4);
        limits.at = Starts {
            q: q.first_element(),
            k: k.first_element(),
            v: v.first_element(),
            o: output.first_element(),
            state: 0,
        };
        let segments = plan::plan(
            opts.layout,
            &dims,
            &limits,
            &call.sequences,
            Needs::WHOLE_ROWS,
        )?;
        let setup = *self.setup();
        let launch = Launch {
            scale,
            slopes: opts.alibi,
            ..Launch::new(dims, opts.layout, setup.storage(q.dtype()), segments)
        };
        // Softmax binds no state; q stands in for the unused slot.
        let io = Io {
            q: q.buffer(),
            k: k.buffer(),
            v: v.buffer(),
            o: output.buffer(),
            state: q.buffer(),
        };
        softmax::record(&mut rec, &setup, &launch, &io).await?;
        output.finish(&mut rec).await?;
        rec.submit().await?;
        Ok(o)
    }
}

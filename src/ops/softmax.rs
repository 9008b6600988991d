//! Causal softmax attention (FlashAttention-style online softmax): the
//! baseline Lightning Attention is compared with, on the same GPU and API.

use super::{bind, dispatch, pipelines, Common, Launch, Output};
use crate::context::Context;
use crate::error::Result;
use crate::kernels::Pass;
use crate::layout::Layout;
use crate::ops::forward::{self, ForwardOptions};
use crate::ops::plan::{self, Sequence};
use crate::tensor::Tensor;

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
        self.check_lost()?;
        let as_forward = ForwardOptions {
            slopes: opts.alibi,
            layout: opts.layout,
            ..Default::default()
        };
        let dims = forward::validate(self, q, k, v, &as_forward)?.dims;
        let scale = opts.scale.unwrap_or(1.0 / (dims.d as f32).sqrt());
        forward::check_scale(scale)?;
        let whole = [Sequence {
            start: 0,
            len: dims.n,
            first_state: 0,
        }];
        let segments = plan::plan(
            opts.layout,
            &dims,
            &super::limits(self, q.dtype()),
            &whole,
            plan::Needs::WHOLE_ROWS,
        )?;
        let o = self.empty_as(v.shape(), v.dtype(), "o")?;
        let output = Output::new(self, &o)?;
        let launch = Launch {
            dims,
            layout: opts.layout,
            scale,
            slopes: opts.alibi,
            starts_from_state: false,
            slotted: false,
            storage: self.storage(q.dtype()),
            reversed: [false; 4],
            segments,
        };
        let [pipe] = pipelines(self, [Pass::SoftmaxAttention], launch.storage).await?;
        let common = Common::new(self, &launch);
        let e_tiles = dims.e.div_ceil(self.inner.config.tile as usize);
        super::submit_pass(self, "softmax attention", |pass| {
            for (i, s) in launch.segments.iter().enumerate() {
                let bindings = [
                    bind(q.buffer(), s.q),
                    bind(k.buffer(), s.k),
                    bind(v.buffer(), s.v),
                    bind(output.buffer(), s.o),
                ];
                dispatch(
                    self,
                    pass,
                    &common,
                    &pipe,
                    i,
                    &bindings,
                    s.bh_count * s.blocks * e_tiles,
                );
            }
        })
        .await?;
        output.finish(self).await?;
        Ok(o)
    }
}

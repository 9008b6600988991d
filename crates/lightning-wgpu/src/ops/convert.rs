//! Converting a tensor's storage type on the GPU.

use crate::context::Context;
use crate::error::Result;
use crate::kernels::pack;
use crate::runtime::recorder::Recorder;
use crate::tensor::{DType, Tensor};
use crate::validate;

impl Context {
    /// Converts an f32 tensor to `dtype` on the GPU (f16 and bf16 round to
    /// nearest even, as the kernels' outputs do). Blocks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn convert(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        pollster::block_on(self.convert_async(t, dtype))
    }

    /// Async form of [`Context::convert`].
    pub async fn convert_async(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        validate::tensor(self, "tensor", t, DType::F32)?;
        let out = self.new_tensor(t.shape(), dtype, "converted")?;
        let mut rec = Recorder::new(self.rt(), "convert");
        match dtype {
            DType::F32 => {
                t.needs("tensor", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
                rec.copy(t.buffer(), t.offset(), out.buffer(), 0, t.size_bytes())
            }
            DType::F16 | DType::BF16 => {
                pack::pack(&mut rec, (t.buffer(), t.first_element()), &out).await?
            }
        }
        rec.submit().await?;
        Ok(out)
    }
}

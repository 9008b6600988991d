//! Compiled pipelines, cached by a key that names everything their source
//! was specialised with (built by the kernels' spec, opaque here).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{lock, Runtime};
use crate::error::{Error, Result};

#[derive(Default)]
pub(crate) struct PipelineCache {
    compiled: Mutex<HashMap<String, wgpu::ComputePipeline>>,
}

impl Runtime {
    /// The pipeline cached under `key`, compiled from `source()` (entry
    /// point `main`, layout from the shader) on first use.
    pub(crate) async fn pipeline(
        &self,
        key: &str,
        label: &'static str,
        source: impl FnOnce() -> String,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = lock(&self.pipelines().compiled).get(key) {
            return Ok(p.clone());
        }
        let device = self.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source().into()),
        };
        let module = if self.checked() {
            device.create_shader_module(desc)
        } else {
            // SAFETY: every index in our kernels is bounded either by the
            // loop structure (workgroup arrays) or by the windows and shapes
            // the host validated before dispatch (storage buffers); the test
            // suite runs the same kernels checked and unchecked.
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu {
                op: label,
                reason: e.to_string(),
            });
        }
        lock(&self.pipelines().compiled).insert(key.to_string(), pipeline.clone());
        Ok(pipeline)
    }
}

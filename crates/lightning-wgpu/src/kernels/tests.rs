//! Every kernel, in every specialisation, parses, validates and translates
//! to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12) with naga, offline: no GPU
//! needed, so the back ends this machine cannot run at least compile what
//! we ship. And the uniform blocks the host writes are laid out as WGSL
//! reads them.

use super::chunk::tensor_core;
use super::params::{PackJob, Params, StateMap};
use super::{BlockConfig, Kernel, KernelSpec, OutStore, Storage};

/// Parses, validates and translates `source`: to SPIR-V, MSL and HLSL, or to
/// SPIR-V only for the tensor-core kernels (wgpu runs those on Vulkan only).
fn translate(name: &str, source: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));

    let spv = naga::back::spv::write_vec(&module, &info, &Default::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    assert_eq!(spv.first(), Some(&0x0723_0203), "{name}: SPIR-V magic");
    if source.contains("enable wgpu_cooperative_matrix;") {
        return module;
    }
    let msl_options = naga::back::msl::Options {
        lang_version: (2, 1),
        ..Default::default()
    };
    let (msl, _) = naga::back::msl::write_string(&module, &info, &msl_options, &Default::default())
        .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
    assert!(
        msl.contains("kernel void main_"),
        "{name}: no MSL kernel entry point"
    );
    let hlsl_options = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &Default::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    assert!(
        hlsl.contains("[numthreads("),
        "{name}: no HLSL compute entry point"
    );
    module
}

/// Every specialisation a context can ask for.
fn specs() -> Vec<KernelSpec> {
    let mut out = Vec::new();
    for rows in BlockConfig::ROWS {
        for depth in BlockConfig::DEPTHS {
            let config = BlockConfig { rows, depth };
            for kernel in Kernel::ALL {
                for storage in Storage::ALL {
                    if kernel.tensor_cores() {
                        // As the tensor-core path asks: blocks of 64, half
                        // inputs read as words, each output store.
                        let words = matches!(storage, Storage::F16Packed | Storage::Bf16);
                        if rows != tensor_core::BLOCK_ROWS || !words {
                            continue;
                        }
                        for out_store in [OutStore::F32, OutStore::F16, OutStore::Bf16Pairs] {
                            out.push(KernelSpec {
                                out: out_store,
                                ..KernelSpec::new(kernel, storage, config)
                            });
                        }
                    } else {
                        out.push(KernelSpec::new(kernel, storage, config));
                    }
                    // Every read binding declared read_write, as where a
                    // caller's buffer holds an input and an output.
                    let reads: Vec<&str> = kernel.bindings().iter().map(|b| b.name).collect();
                    let shared = KernelSpec::new(kernel, storage, config).sharing(&reads);
                    if !kernel.tensor_cores() && shared.shared != 0 {
                        out.push(shared);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_specialisation_translates() {
    for spec in specs() {
        let source = spec.wgsl();
        let c = spec.config;
        assert!(source.contains(&format!("const BLOCK: u32 = {}u;", c.rows)));
        assert!(source.contains(&format!("const DEPTH: u32 = {}u;", c.depth)));
        assert!(source.contains(&format!("const THREADS: u32 = {}u;", c.threads())));
        let packed = matches!(spec.storage, Storage::F16Packed | Storage::Bf16);
        assert!(source.contains(&format!("const PACK: u32 = {}u;", u32::from(packed))));
        translate(&spec.key(), &source);
    }
}

#[test]
fn shipped_files_are_all_kernels() {
    // Every .wgsl file under shaders/ is a kernel of the table (or a
    // shared piece under lib/), so none is left out of the tests above.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    let mut kernels: Vec<String> = Kernel::ALL
        .iter()
        .map(|k| format!("{}.wgsl", k.name()))
        .collect();
    kernels.sort();
    assert_eq!(files, kernels);
}

#[test]
fn kernels_fit_the_workgroup_memory_the_host_plans_with() {
    // The host sizes blocks from `workgroup_bytes` (and the tensor-core
    // path's WORKGROUP_BYTES); neither may undercount what a kernel declares.
    for spec in specs() {
        let module = naga::front::wgsl::parse_str(&spec.wgsl()).expect("parse");
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
            .map(|(_, g)| layouter[g.ty].size)
            .sum();
        let declared = if spec.kernel.tensor_cores() {
            tensor_core::WORKGROUP_BYTES
        } else {
            spec.config.workgroup_bytes()
        };
        assert!(bytes <= declared, "{}: {bytes} bytes declared", spec.key());
    }
}

/// The byte offset of each member of WGSL struct `name` in `module`.
fn wgsl_offsets(module: &naga::Module, name: &str) -> Vec<(String, u32)> {
    let ty = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no struct {name}"));
    match &ty.1.inner {
        naga::TypeInner::Struct { members, .. } => members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
            .collect(),
        other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn uniform_blocks_are_laid_out_as_the_host_writes_them() {
    for (name, fields, size, kernel) in [
        (
            "Params",
            Params::FIELDS,
            std::mem::size_of::<Params>(),
            Kernel::BlockOutput,
        ),
        (
            "PackJob",
            PackJob::FIELDS,
            std::mem::size_of::<PackJob>(),
            Kernel::PackOutput,
        ),
        (
            "StateMap",
            StateMap::FIELDS,
            std::mem::size_of::<StateMap>(),
            Kernel::StateMap,
        ),
    ] {
        let spec = KernelSpec::new(kernel, Storage::F32, BlockConfig::default());
        let module = naga::front::wgsl::parse_str(&spec.wgsl()).expect("parse");
        let host: Vec<(String, u32)> = fields
            .iter()
            .filter(|f| !f.1.is_empty())
            .map(|&(n, _, at)| (n.to_string(), at as u32))
            .collect();
        assert_eq!(wgsl_offsets(&module, name), host, "{name}");
        // The host's struct (with its padding) covers what WGSL reads.
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let (handle, _) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .expect("struct");
        assert!(
            layouter[handle].size as usize <= size,
            "{name}: {} > {size}",
            layouter[handle].size
        );
    }
}

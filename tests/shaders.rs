//! Every WGSL file we ship parses, validates, and translates to SPIR-V
//! (Vulkan), MSL (Metal) and HLSL (DX12) with naga, offline: no GPU needed,
//! so the back ends this machine cannot run at least compile what we ship.

use lightning_wgpu::kernels::{wgsl, KernelConfig, Pass, Storage, COOP_WORKGROUP_BYTES};

/// Parses, validates and translates `source`: to SPIR-V, MSL and HLSL, or
/// to SPIR-V only for the cooperative-matrix passes (wgpu runs those on
/// Vulkan only).
fn translate(name: &str, source: &str) {
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
        return;
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
}

#[test]
fn shipped_files_translate_as_written() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let common = std::fs::read_to_string(format!("{dir}/common.wgsl")).expect("common.wgsl");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("shaders/") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".wgsl") || name == "common.wgsl" {
            continue;
        }
        let body = std::fs::read_to_string(&path).expect("read shader");
        let pass = Pass::ALL
            .into_iter()
            .find(|p| format!("{}.wgsl", p.name()) == name)
            .unwrap_or_else(|| panic!("{name} is not a pass in Pass::ALL"));
        if pass.uses_prelude() {
            let enables = pass.enables(Storage::F32);
            translate(&name, &format!("{enables}{common}\n{body}"));
        } else {
            translate(&name, &body);
        }
        seen += 1;
    }
    assert_eq!(
        seen,
        Pass::ALL.len(),
        "a pass file is not listed in Pass::ALL, or the reverse"
    );
}

#[test]
fn every_specialisation_translates() {
    for (tile, chunk) in KernelConfig::TILES
        .into_iter()
        .flat_map(|t| KernelConfig::CHUNKS.map(|c| (t, c)))
    {
        let config = KernelConfig { tile, chunk };
        for pass in Pass::ALL.into_iter().filter(|p| p.uses_prelude()) {
            for storage in Storage::ALL {
                if pass.cooperative() && (tile != 64 || !storage.is_half()) {
                    continue;
                }
                let source = wgsl(pass, config, storage);
                assert!(
                    source.contains(&format!("const TILE: u32 = {tile}u;")),
                    "TILE not specialised"
                );
                assert!(source.contains(&format!("const THREADS: u32 = {}u;", config.threads())));
                // The tensor-core passes read native f16 two to a word too.
                let packed = matches!(storage, Storage::F16Packed | Storage::Bf16)
                    || (pass.cooperative() && storage == Storage::F16Native);
                let pack = if packed { 1 } else { 0 };
                assert!(
                    source.contains(&format!("const PACK: u32 = {pack}u;")),
                    "{storage:?}: PACK not specialised"
                );
                assert_eq!(
                    source.starts_with("enable f16;"),
                    storage == Storage::F16Native || pass.cooperative()
                );
                assert!(source.contains(&format!("const CHUNK: u32 = {chunk}u;")));
                if pass == Pass::BlockOutputCoop {
                    // Writes o in f16 or bf16 itself exactly where the host
                    // plans the output in 2-byte elements, else f32 for packing.
                    let out = match storage {
                        Storage::F16Native => "alias Out = f16;",
                        Storage::Bf16 => "alias Out = u32;",
                        _ => "alias Out = f32;",
                    };
                    assert!(source.contains(out), "{storage:?}: {out} missing");
                    let pairs = format!(
                        "const OUT_BF16: u32 = {}u;",
                        u32::from(storage == Storage::Bf16)
                    );
                    assert!(source.contains(&pairs), "{storage:?}: {pairs} missing");
                }
                translate(
                    &format!("{} tile {tile} chunk {chunk} {storage:?}", pass.name()),
                    &source,
                );
            }
        }
    }
}

#[test]
fn specialisation_fits_the_declared_workgroup_memory() {
    // The host sizes tiles from `workgroup_bytes`; it must not undercount
    // what a kernel declares.
    for (tile, chunk) in KernelConfig::TILES
        .into_iter()
        .flat_map(|t| KernelConfig::CHUNKS.map(|c| (t, c)))
    {
        let config = KernelConfig { tile, chunk };
        for pass in Pass::ALL {
            if pass.cooperative() && tile != 64 {
                continue;
            }
            let source = wgsl(pass, config, Storage::F32);
            let module = naga::front::wgsl::parse_str(&source).expect("parse");
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).expect("layout");
            let bytes: u32 = module
                .global_variables
                .iter()
                .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                .map(|(_, g)| layouter[g.ty].size)
                .sum();
            let declared = if pass.cooperative() {
                COOP_WORKGROUP_BYTES
            } else {
                config.workgroup_bytes()
            };
            assert!(
                bytes <= declared,
                "{} tile {tile}: {bytes} bytes declared",
                pass.name()
            );
        }
    }
}

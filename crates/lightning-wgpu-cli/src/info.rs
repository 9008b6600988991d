//! `lightning-wgpu info`: what wgpu sees on this machine and which adapter
//! the library would pick, with the features and limits that decide how the
//! kernels run (block size, how large a tensor one dispatch can bind).

use std::process::ExitCode;

use anyhow::Result;
use lightning_wgpu::{adapters, wgpu, AdapterSummary, Context, ContextOptions, ADAPTER_ENV};

/// Features the kernels use or may use, in the order printed.
const FEATURES: [(&str, wgpu::Features); 4] = [
    ("SHADER_F16", wgpu::Features::SHADER_F16),
    ("SUBGROUP", wgpu::Features::SUBGROUP),
    ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    (
        "EXPERIMENTAL_COOPERATIVE_MATRIX",
        wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
    ),
];

/// `1234567 (1.2 MiB)`: exact for scripts, rounded for people.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{b} ({x:.1} {})", UNITS[unit])
    }
}

fn print_adapter(a: &AdapterSummary, picked: bool) {
    let i = &a.info;
    let mark = if picked { '*' } else { ' ' };
    println!("{mark} [{}] {}", a.index, i.name);
    println!(
        "      backend {:?}, type {:?}, driver {:?}, driver_info {:?}",
        i.backend, i.device_type, i.driver, i.driver_info
    );
    let features: Vec<String> = FEATURES
        .iter()
        .map(|(name, f)| {
            let yes = if a.features.contains(*f) { "yes" } else { "no" };
            format!("{name} {yes}")
        })
        .collect();
    println!("      features: {}", features.join(", "));
    let l = &a.limits;
    println!(
        "      max_storage_buffer_binding_size {}",
        bytes(l.max_storage_buffer_binding_size)
    );
    println!("      max_buffer_size {}", bytes(l.max_buffer_size));
    println!(
        "      max_compute_workgroup_storage_size {}",
        bytes(u64::from(l.max_compute_workgroup_storage_size))
    );
    println!(
        "      max_compute_invocations_per_workgroup {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "      max_compute_workgroups_per_dimension {}",
        l.max_compute_workgroups_per_dimension
    );
}

/// True when `a` is the adapter `ctx` was opened on. wgpu gives adapters no
/// identity, so this compares what identifies one: name, backend and PCI
/// bus (the latter tells two identical GPUs apart where the driver reports it).
fn is_context_adapter(a: &AdapterSummary, ctx: &Context) -> bool {
    let (x, y) = (&a.info, ctx.adapter_info());
    x.name == y.name && x.backend == y.backend && x.device_pci_bus_id == y.device_pci_bus_id
}

/// Runs `info`. Fails (after listing what there is) when no context can be
/// opened with `options`, since then nothing else in the tool would work.
pub fn run(options: &ContextOptions) -> Result<ExitCode> {
    let list = adapters(options);
    // Open the context before printing so the mark can go on the list.
    let ctx = Context::with_options(options.clone());
    let picked = ctx
        .as_ref()
        .ok()
        .and_then(|c| list.iter().position(|a| is_context_adapter(a, c)));
    println!("adapters ({}):", list.len());
    for (i, a) in list.iter().enumerate() {
        print_adapter(a, picked == Some(i));
    }
    let ctx = ctx?;
    let how = if options.adapter.is_some() {
        "chosen by --adapter".to_string()
    } else if std::env::var(ADAPTER_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        format!("chosen by {ADAPTER_ENV}")
    } else {
        "the default pick".to_string()
    };
    println!(
        "* = {how}: {} ({:?}), blocks of {} rows, shader bounds checks {}, f16/bf16 on cooperative matrices {}",
        ctx.adapter_info().name,
        ctx.adapter_info().backend,
        ctx.block_rows(),
        if ctx.checked() { "on" } else { "off" },
        if ctx.cooperative_matrix() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(ExitCode::SUCCESS)
}

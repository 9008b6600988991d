//! GPU timing through timestamp queries (lavapipe has TIMESTAMP_QUERY).

mod common;

use lightning_wgpu::{Error, ForwardOptions, Method};

#[test]
fn each_pass_reports_its_gpu_time() {
    let ctx = common::context(false);
    assert!(ctx.can_time(), "lavapipe exposes TIMESTAMP_QUERY");
    let x = common::random(&mut common::rng(common::seed()), 2 * 200 * 32, 32);
    let t = ctx.tensor(&x, &[1, 2, 200, 32]).unwrap();
    ctx.start_timing(8).unwrap();
    ctx.forward(&t, &t, &t, &ForwardOptions::default()).unwrap();
    ctx.forward(
        &t,
        &t,
        &t,
        &ForwardOptions {
            method: Method::Recurrent,
            ..Default::default()
        },
    )
    .unwrap();
    // While timing, each kernel of the chunked forward has a pass of its own.
    let times = ctx.finish_timing_by_pass().unwrap();
    let names: Vec<&str> = times.iter().map(|&(name, _)| name).collect();
    assert_eq!(
        names,
        ["block_state", "state_scan", "block_output", "recurrent"]
    );
    assert!(times.iter().all(|&(_, s)| s > 0.0 && s < 60.0), "{times:?}");

    // Not timing any more: nothing to finish.
    assert!(matches!(
        ctx.finish_timing(),
        Err(Error::InvalidValue { arg: "timing", .. })
    ));
    // More passes than announced is an error, not a silent gap.
    ctx.start_timing(2).unwrap();
    ctx.forward(&t, &t, &t, &ForwardOptions::default()).unwrap();
    assert!(matches!(
        ctx.finish_timing(),
        Err(Error::InvalidValue { arg: "timing", .. })
    ));
}

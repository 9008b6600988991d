//! GPU timing through timestamp queries (lavapipe has TIMESTAMP_QUERY).

mod common;

use lightning_wgpu::{Error, ForwardOptions, Method};

#[test]
fn each_pass_reports_its_gpu_time() {
    let ctx = common::context(false);
    assert!(ctx.can_time(), "lavapipe exposes TIMESTAMP_QUERY");
    let x = common::random(&mut common::rng(common::seed()), 2 * 200 * 32, 32);
    let t = ctx.tensor(&x, &[1, 2, 200, 32]).unwrap();
    ctx.start_timing(3).unwrap();
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
    let times = ctx.finish_timing().unwrap();
    assert_eq!(times.len(), 2);
    assert!(times.iter().all(|&s| s > 0.0 && s < 60.0), "{times:?}");

    // Not timing any more: nothing to finish.
    assert!(matches!(
        ctx.finish_timing(),
        Err(Error::InvalidValue { arg: "timing", .. })
    ));
    // More passes than announced is an error, not a silent gap.
    ctx.start_timing(1).unwrap();
    ctx.forward(&t, &t, &t, &ForwardOptions::default()).unwrap();
    ctx.forward(&t, &t, &t, &ForwardOptions::default()).unwrap();
    assert!(matches!(
        ctx.finish_timing(),
        Err(Error::InvalidValue { arg: "timing", .. })
    ));
}

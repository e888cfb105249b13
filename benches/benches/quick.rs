//! The main job as a whole: every point of `experiments/quick.toml` (sync
//! against Gavin Shan's RFCv2, Paolo Bonzini's review and the adaptive
//! policy on the mixed far-memory workload) run one after another in this
//! process, as `apflab matrix --jobs 1` runs them in processes of their own.
//! One iteration is the whole experiment; its throughput is in runs.

use std::path::Path;
use std::time::Duration;

use apflab::matrix::Experiment;
use apflab::runner::{RunFlags, run_config};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn quick_experiment(c: &mut Criterion) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/quick.toml");
    let experiment = Experiment::load(&file).expect("experiments/quick.toml");
    let out = tempfile::tempdir().expect("a temporary folder");
    let flags = RunFlags::default();
    let mut group = c.benchmark_group("experiment");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(experiment.len() as u64));
    let configs: Vec<_> = (0..experiment.len())
        .map(|i| experiment.config(i).expect("a point's config"))
        .collect();
    group.bench_function("quick", |b| {
        b.iter(|| {
            for config in &configs {
                let r = run_config(config, None, out.path(), &flags).expect("a run");
                assert!(r.outcome.success, "{}: {:?}", config.name, r.outcome);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, quick_experiment);
criterion_main!(benches);

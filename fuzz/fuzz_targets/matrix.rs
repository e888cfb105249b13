//! Experiment (matrix) files (`apflab matrix X.toml`): the grid is built
//! and every point validated against a base config. The experiment is read
//! from a file, as `apflab matrix` reads it, in a scratch directory laid out
//! like the repository (`experiments/` beside `configs/`, the committed
//! configs copied there), so the seeds' `base = "../configs/X.toml"` work.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use apflab::matrix::Experiment;
use libfuzzer_sys::fuzz_target;

/// The scratch directory's `experiments/fuzz.toml`.
static EXPERIMENT: LazyLock<PathBuf> = LazyLock::new(|| {
    let root = std::env::temp_dir().join(format!("apflab-fuzz-matrix-{}", std::process::id()));
    let configs = root.join("configs");
    std::fs::create_dir_all(&configs).expect("scratch configs directory");
    std::fs::create_dir_all(root.join("experiments")).expect("scratch experiments directory");
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
    for entry in std::fs::read_dir(&source).expect("the committed configs") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let to = configs.join(path.file_name().expect("a file name"));
            std::fs::copy(&path, to).expect("copying a config");
        }
    }
    root.join("experiments/fuzz.toml")
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*EXPERIMENT, data).expect("writing the experiment");
    let Ok(experiment) = Experiment::load(&EXPERIMENT) else {
        return;
    };
    let combinations: usize = experiment.axes.iter().map(|(_, v)| v.len()).product();
    assert_eq!(
        experiment.len(),
        combinations * experiment.repetitions as usize,
        "one point per combination of axis values and repetition"
    );
    // The grid is built lazily: check the first points (a grid may hold up
    // to a million).
    for index in 0..experiment.len().min(64) {
        // What a job runs must start: the VMM accepts every point.
        let config = match experiment.config(index) {
            Ok(c) => c,
            Err(e) => panic!(
                "point {} is in the grid but does not load: {e}",
                Experiment::id(index)
            ),
        };
        if let Err(e) = config.config.vm_config(false).validate() {
            panic!(
                "point {} loads but the VMM refuses it: {e}",
                Experiment::id(index)
            );
        }
    }
});

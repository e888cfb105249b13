//! `apflab matrix` end to end on the emu backend: parallel points equal to
//! sequential ones, resuming, slices, failed points, bad input checked
//! before any run, and the Slurm job script (run here without Slurm, task
//! by task, as `sbatch` would; `scripts/slurm-test` submits it to a real
//! single-node cluster).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

fn apflab(args: &[&str]) -> Output {
    Command::new(APFLAB)
        .args(args)
        .output()
        .expect("apflab runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A short config (two small cpu tasks) as `base.toml` in `dir`, and the
/// experiment `exp.toml` over it with `axes` (TOML lines) and
/// `repetitions`.
fn experiment(dir: &Path, axes: &str, repetitions: u32) -> PathBuf {
    std::fs::write(
        dir.join("base.toml"),
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n[workload]\nkind = \"cpu\"\n\
         tasks = 2\nops = 20000\n[backend]\nkind = \"emu\"\n",
    )
    .unwrap();
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!("base = \"base.toml\"\nrepetitions = {repetitions}\n[axes]\n{axes}\n"),
    )
    .unwrap();
    path
}

/// Two axes of two values, two repetitions: eight short points.
const GRID: &str = "\"guest.vcpus\" = [1, 2]\n\"workload.ops\" = [20000, 40000]";

/// `result.json` of every point below `dir`, without its `wall` section,
/// by run id.
fn results(dir: &Path) -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("result.json").is_file())
        .map(|e| {
            let text = std::fs::read_to_string(e.path().join("result.json")).unwrap();
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v.as_object_mut().unwrap().remove("wall");
            (e.file_name().to_string_lossy().into_owned(), v)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// `table.csv` of `dir` without its wall-clock column, as rows of cells.
fn table(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("table.csv")).unwrap();
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let wall = rows[0].iter().position(|c| c == "wall_time_ms").unwrap();
    rows.into_iter()
        .map(|mut r| {
            r.remove(wall);
            r
        })
        .collect()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn parallel_points_give_the_sequential_results_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), GRID, 2);
    let (seq, par) = (dir.path().join("seq"), dir.path().join("par"));
    let out = apflab(&["matrix", s(&exp), "--out", s(&seq), "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = apflab(&["matrix", s(&exp), "--out", s(&par), "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("exp: 8 runs, 8 ok, 0 failed"),
        "{}",
        text(&out)
    );

    let (a, b) = (results(&seq), results(&par));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "--jobs 2 gives the results of --jobs 1");
    // Each point is its own run: names, seeds and configs differ.
    assert_eq!(a[0].1["config"]["name"], "exp/r000");
    assert_eq!(a[1].1["config"]["parsed"]["seed"], 4);
    assert_eq!(a[7].1["config"]["parsed"]["guest"]["vcpus"], 2);
    assert_eq!(a[7].1["guest"]["metrics"]["cpu"]["ops"], 80000);
    let t = table(&seq);
    assert_eq!(t, table(&par));
    assert_eq!(t.len(), 9);
    assert_eq!(&t[0][..3], ["run", "guest.vcpus", "workload.ops"]);
    assert_eq!(&t[8][..4], ["r007", "2", "40000", "1"]);
    assert!(t[8].contains(&"r007/result.json".to_owned()), "{t:?}");
    // The point's config is kept beside its result, and hashed in it.
    let point = std::fs::read_to_string(par.join("points/r005.toml")).unwrap();
    assert!(point.contains("vcpus = 2"), "{point}");

    // Resumed: nothing runs again...
    let before = modified(&par.join("r005/result.json"));
    let out = apflab(&["matrix", s(&exp), "--out", s(&par)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("8 of 8 points already have results"),
        "{}",
        text(&out)
    );
    assert_eq!(modified(&par.join("r005/result.json")), before);
    assert_eq!(table(&par), t);

    // ... unless forced, here for a slice only (other points untouched,
    // still in the table).
    let untouched = modified(&par.join("r000/result.json"));
    let out = apflab(&[
        "matrix",
        s(&exp),
        "--out",
        s(&par),
        "--force",
        "--filter",
        "guest.vcpus=2",
        "--filter",
        "rep=1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("exp: 2 runs, 2 ok"), "{}", text(&out));
    assert_ne!(modified(&par.join("r005/result.json")), before);
    assert_eq!(modified(&par.join("r000/result.json")), untouched);
    assert_eq!(table(&par), t);
    assert_eq!(results(&par), a);

    // A changed config is a different point: it runs again.
    let base = dir.path().join("base.toml");
    let changed = std::fs::read_to_string(&base)
        .unwrap()
        .replace("tasks = 2", "tasks = 1");
    std::fs::write(&base, changed).unwrap();
    let out = apflab(&["matrix", s(&exp), "--out", s(&par), "--filter", "rep=0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("exp: 4 runs, 4 ok"), "{}", text(&out));
    assert!(!text(&out).contains("already"), "{}", text(&out));
}

#[test]
fn a_failing_point_is_recorded_with_its_error_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "\"backend.max_virtual_ms\" = [1, 10000]", 1);
    let out_dir = dir.path().join("out");
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir)]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("r000 (backend.max_virtual_ms=1 rep=0): FAILED"),
        "{log}"
    );
    assert!(log.contains("1 of 2 runs failed: r000"), "{log}");
    let t = table(&out_dir);
    let col = |name: &str| t[0].iter().position(|c| c == name).unwrap();
    assert_eq!(t[1][col("success")], "false");
    assert_eq!(t[1][col("exit")], "timeout");
    assert!(
        t[1][col("error")].contains("max_virtual_ms = 1 ms"),
        "{t:?}"
    );
    assert_eq!(t[2][col("success")], "true");
    assert_eq!(t[2][col("error")], "");
    assert!(out_dir.join("r001/result.json").is_file());
}

/// Runs `apflab matrix` on an experiment with `axes` and `extra` arguments
/// into a fresh folder; checks exit status 2, that the message has every
/// one of `expected`, and that no point ran.
fn assert_bad(axes: &str, extra: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), axes, 1);
    let out_dir = dir.path().join("out");
    let mut args = vec!["matrix", s(&exp), "--out", s(&out_dir)];
    args.extend_from_slice(extra);
    let out = apflab(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{axes} {extra:?}: {}",
        text(&out)
    );
    for e in expected {
        assert!(
            stderr.contains(e),
            "{axes} {extra:?}: expected {e:?} in:\n{stderr}"
        );
    }
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out_dir.join("r000").exists(), "a point ran: {stderr}");
}

#[test]
fn bad_experiments_and_selections_are_exit_2_before_any_run() {
    assert_bad(
        "\"guest.vcpuz\" = [1, 2]",
        &[],
        &[
            "exp.toml",
            "axes.\"guest.vcpuz\"",
            "not a config key",
            "vcpus",
        ],
    );
    assert_bad(
        "\"workload.kind\" = [\"cpu\", \"bogus\"]",
        &[],
        &[
            "exp.toml",
            "axes.\"workload.kind\"",
            "\"bogus\"",
            "unknown workload",
        ],
    );
    assert_bad(
        "\"guest.vcpus\" = [1, 2]\n\"workload.ops\" = []",
        &[],
        &["exp.toml", "axes.\"workload.ops\"", "empty"],
    );
    assert_bad(
        "\"guest.vcpus\" = [1, 99]",
        &[],
        &["exp.toml", "axes.\"guest.vcpus\"", "value 99"],
    );
    assert_bad(
        "\"guest.vcpus\" = [1, 2]",
        &["--filter", "guest.vcpus=3"],
        &["exp.toml", "--filter guest.vcpus=3", "values: 1, 2"],
    );
    assert_bad(
        "\"guest.vcpus\" = [1, 2]",
        &["--filter", "workload.ops=5"],
        &["exp.toml", "not an axis", "guest.vcpus, rep"],
    );
    assert_bad(
        "\"guest.vcpus\" = [1, 2]",
        &["--filter", "rep=1"],
        &["exp.toml", "no repetition `1`"],
    );
    assert_bad(
        "\"guest.vcpus,workload.ops\" = [[1, 20000], [2]]",
        &[],
        &[
            "exp.toml",
            "axes.\"guest.vcpus,workload.ops\"",
            "value [2]",
            "an array of 2 values",
        ],
    );
    // Not a point of the kvm half runs before the kvm half fails.
    if !(cfg!(target_arch = "aarch64") && Path::new("/dev/kvm").exists()) {
        assert_bad(
            "\"backend.kind\" = [\"emu\", \"kvm\"]",
            &[],
            &["exp.toml", "r001", "axes.\"backend.kind\"", "kvm"],
        );
    }
}

#[test]
fn an_unusable_results_folder_is_exit_2_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "\"guest.vcpus\" = [1, 2]", 1);

    // --out naming a file.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let out = apflab(&["matrix", s(&exp), "--out", s(&file)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a directory"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A folder of results of another schema version.
    let old = dir.path().join("old");
    std::fs::create_dir_all(old.join("r001")).unwrap();
    std::fs::write(old.join("r001/result.json"), "{\"schema_version\": 0}").unwrap();
    let out = apflab(&["matrix", s(&exp), "--out", s(&old)]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    for e in ["r001/result.json", "schema_version", "--force"] {
        assert!(log.contains(e), "expected {e:?} in {log}");
    }
    assert!(!old.join("r000").exists());
    // --force reruns every point over them.
    let out = apflab(&["matrix", s(&exp), "--out", s(&old), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(results(&old).len(), 2);
}

#[test]
fn an_interrupted_matrix_leaves_no_half_written_result_and_resumes() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(
        dir.path(),
        "\"workload.ops\" = [4000000, 5000000, 6000000, 7000000]",
        2,
    );
    let out_dir = dir.path().join("out");
    let mut child = Command::new(APFLAB)
        .args(["matrix", s(&exp), "--out", s(&out_dir), "--jobs", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Ctrl-C, as a terminal sends it: to the whole process group, once the
    // first runs are under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !out_dir.join("points/r007.toml").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pgid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // touches no memory of ours.
    unsafe {
        libc::kill(-pgid, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    let interrupted = !status.success();
    // Every result.json present is whole.
    let partial = results(&out_dir);
    assert!(partial.len() <= 8);
    // The rest runs on the next start; the finished ones are kept.
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    if interrupted && !partial.is_empty() {
        assert!(
            text(&out).contains("already have results"),
            "{}",
            text(&out)
        );
    }
    let all = results(&out_dir);
    assert_eq!(all.len(), 8);
    for (id, r) in &partial {
        assert_eq!(all.iter().find(|(i, _)| i == id).map(|(_, v)| v), Some(r));
    }
    let hidden: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn the_slurm_job_runs_each_point_as_a_local_matrix_does() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), GRID, 1);
    let local = dir.path().join("local");
    let out = apflab(&["matrix", s(&exp), "--out", s(&local)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // --submit needs sbatch.
    let shared = dir.path().join("shared");
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(APFLAB)
        .args(["matrix", s(&exp), "--slurm", s(&shared), "--submit"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("sbatch is not on the PATH"),
        "{}",
        text(&out)
    );
    assert!(!shared.exists());
    // What becomes an #SBATCH line is one word.
    let out = apflab(&[
        "matrix",
        s(&exp),
        "--slurm",
        s(&shared),
        "--time",
        "5\nrm -rf /",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--time"), "{}", text(&out));
    assert!(!shared.exists());

    let out = apflab(&[
        "matrix",
        s(&exp),
        "--slurm",
        s(&shared),
        "--chunk",
        "3",
        "--partition",
        "short",
        "--time",
        "5:00",
        "--account",
        "lab",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 array tasks for 4 points"),
        "{}",
        text(&out)
    );
    let script = std::fs::read_to_string(shared.join("job.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-1",
        "#SBATCH --partition=short",
        "#SBATCH --time=5:00",
        "#SBATCH --account=lab",
        "0) points=\"r000 r001 r002\" ;;",
        "1) points=\"r003\" ;;",
    ] {
        assert!(script.contains(line), "{line:?} in:\n{script}");
    }
    assert!(!shared.join("r000").exists(), "--slurm runs nothing itself");
    // Nothing collected yet.
    let out = apflab(&["matrix", s(&exp), "--collect", s(&shared)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("4 of 4 runs have no results"),
        "{}",
        text(&out)
    );

    // The array tasks, one after the other, as Slurm would start them.
    for task in ["0", "1"] {
        let out = Command::new("bash")
            .arg(shared.join("job.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", task)
            .output()
            .unwrap();
        assert!(out.status.success(), "task {task}: {}", text(&out));
    }
    let out = apflab(&["matrix", s(&exp), "--collect", s(&shared)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(results(&shared), results(&local));
    assert_eq!(table(&shared), table(&local));
    // Resubmitting a finished matrix has nothing to do.
    let out = apflab(&["matrix", s(&exp), "--slurm", s(&shared)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing to submit"), "{}", text(&out));
}

#[test]
fn report_reads_a_matrix_folder_and_skips_runs_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "\"guest.vcpus\" = [1, 2]", 1);
    let out_dir = dir.path().join("out");
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A run still writing (or killed while writing).
    std::fs::create_dir_all(out_dir.join(".partial-r001")).unwrap();
    std::fs::write(out_dir.join(".partial-r001/result.json"), "{\"schema").unwrap();
    let md = dir.path().join("report.md");
    let out = apflab(&["report", s(&out_dir), "--out", s(&md)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("from 2 result files"), "{md}");
    assert!(md.contains("exp/r001"), "{md}");
}

#[test]
fn a_matrix_with_a_sync_baseline_ends_with_the_comparison_against_it() {
    let dir = tempfile::tempdir().unwrap();
    // The mixed far-memory workload of configs/quick.toml, sync against an
    // async variant.
    let quick = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quick.toml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("base.toml"), quick).unwrap();
    let exp = dir.path().join("cmp.toml");
    std::fs::write(
        &exp,
        "base = \"base.toml\"\n[axes]\n\"policy.module\" = [\"sync\", \"gavin-rfcv2\"]\n",
    )
    .unwrap();
    let out = apflab(&["matrix", s(&exp), "--out", s(&dir.path().join("out"))]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let rows: Vec<&str> = log.lines().skip_while(|l| !l.contains("vs sync")).collect();
    assert_eq!(rows.len(), 3, "{log}");
    assert!(
        rows[1].contains("sync") && rows[1].contains("+0.0%"),
        "{log}"
    );
    let async_row: Vec<&str> = rows[2].split_whitespace().collect();
    assert_eq!(async_row[1..3], ["-", "gavin-rfcv2"], "{log}");
    let sync_ms: f64 = rows[1].split_whitespace().nth(3).unwrap().parse().unwrap();
    let async_ms: f64 = async_row[3].parse().unwrap();
    let percent: f64 = async_row[4].trim_end_matches('%').parse().unwrap();
    assert!(
        (percent - 100.0 * (async_ms - sync_ms) / sync_ms).abs() < 0.1,
        "{log}"
    );
    assert_eq!(async_row[5], "100%", "{log}");
    // The report: tables of at most ten columns, the async run's makespan
    // against its baseline, and every plot as SVG and PNG with its series.
    let md = dir.path().join("paper/cmp.md");
    let out = apflab(&["report", s(&dir.path().join("out")), "--out", s(&md)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plot = |name: &str, series: &[&str]| {
        let svg =
            std::fs::read_to_string(dir.path().join(format!("paper/cmp-{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}: {svg}"
        );
        for label in series {
            assert!(svg.contains(label), "{name}: no {label:?} in {svg}");
        }
        let png = std::fs::read(dir.path().join(format!("paper/cmp-{name}.png"))).unwrap();
        assert_eq!(png[..8], *b"\x89PNG\r\n\x1a\n", "{name}: not a PNG");
        assert_eq!(&png[12..16], b"IHDR", "{name}");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width >= 700 && height >= 150, "{name}: {width}x{height}");
        // Not a blank image: it compresses to more than a few hundred bytes.
        assert!(png.len() > 4000, "{name}: {} bytes", png.len());
    };
    plot("makespan", &["gavin-rfcv2", "makespan / sync"]);
    plot("token-latency", &["r001 gavin-rfcv2"]);
    plot(
        "vcpu-time",
        &["r000 sync", "r001 gavin-rfcv2", "stalled (sync)"],
    );
    let md = std::fs::read_to_string(&md).unwrap();
    for name in ["makespan", "token-latency", "vcpu-time"] {
        assert!(md.contains(&format!("(cmp-{name}.svg)")), "{md}");
        assert!(md.contains(&format!("`cmp-{name}.png`")), "{md}");
    }
    for line in md.lines().filter(|l| l.starts_with('|')) {
        let columns = line.matches('|').count() - 1;
        assert!(columns <= 10, "{columns} columns: {line}");
    }
    let row = md
        .lines()
        .find(|l| l.starts_with("| cmp/r001 |"))
        .unwrap_or_else(|| panic!("{md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[2], "gavin-rfcv2", "{row}");
    let vs: f64 = cells[8].trim_end_matches('%').trim().parse().unwrap();
    assert!((vs - percent).abs() < 0.051, "{row}: {percent}");
    assert!(row.contains("r001/result.json"), "{row}");
    // Each figure names its runs' result files and config hashes.
    let sha = results(&dir.path().join("out"))
        .into_iter()
        .find(|(p, _)| p.contains("r001"))
        .map(|(_, r)| r["config"]["sha256"].as_str().unwrap()[..12].to_owned())
        .unwrap();
    // The paper's placeholders compute the same figures from the same
    // folder.
    let template = dir.path().join("paper.in.md");
    std::fs::write(
        &template,
        "change: {{vs-sync out policy.module.name=gavin-rfcv2}}\n\
         faults: {{value out /apf/faults count policy.module.name=gavin-rfcv2}}\n\
         rate: {{rate-change out /vmm/instructions /virtual_time_ns policy.module.name=sync -> policy.module.name=gavin-rfcv2}}\n\
         {{runs out}}\n",
    )
    .unwrap();
    let paper = dir.path().join("paper.md");
    let out = apflab(&[
        "paper",
        s(&template),
        "--results",
        s(dir.path()),
        "--out",
        s(&paper),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let paper = std::fs::read_to_string(&paper).unwrap();
    // One run: the figure says so, as it has no interval.
    let expected = format!("{percent:+.1} % (1 run)").replace('-', "\u{2212}");
    assert!(
        paper.starts_with(&format!("change: {expected}\n")),
        "{paper}"
    );
    let faults = results(&dir.path().join("out"))[1].1["apf"]["faults"].clone();
    assert!(paper.contains(&format!("faults: {faults}\n")), "{paper}");
    // Instructions per virtual second, async against sync.
    let rate = |r: &serde_json::Value| {
        r["vmm"]["instructions"].as_f64().unwrap() / r["virtual_time_ns"].as_f64().unwrap()
    };
    let all = results(&dir.path().join("out"));
    let of = |policy: &str| {
        &all.iter()
            .find(|(_, r)| r["policy"]["module"] == policy)
            .unwrap_or_else(|| panic!("no {policy} run"))
            .1
    };
    let rate_change = 100.0 * (rate(of("gavin-rfcv2")) / rate(of("sync")) - 1.0);
    let expected_rate = format!("{rate_change:+.1} % (1 run)").replace('-', "\u{2212}");
    assert!(
        paper.contains(&format!("rate: {expected_rate}\n")),
        "{paper}"
    );
    assert!(
        paper.contains("| policy | runs | makespan ms | vs sync |\n"),
        "{paper}"
    );
    assert!(
        paper.contains(&format!("| gavin-rfcv2 | 1 | {async_ms:.3} | {expected} |")),
        "{paper}"
    );
    // A selection of no run is an error naming the template's line.
    std::fs::write(&template, "ok\n{{vs-sync out policy.module.name=paolo}}\n").unwrap();
    let out = apflab(&[
        "paper",
        s(&template),
        "--results",
        s(dir.path()),
        "--out",
        s(&dir.path().join("p2.md")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("paper.in.md:2: no run has policy.module.name=paolo"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("p2.md").exists());
    let figure_row = md
        .lines()
        .find(|l| l.starts_with("| r001 gavin-rfcv2 |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        figure_row.contains("r001/result.json") && figure_row.contains(&format!("`{sha}`")),
        "{figure_row}"
    );
}

#[test]
fn keys_varied_together_and_set_keys_reach_every_point_and_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(
        dir.path(),
        "\"guest.vcpus,workload.tasks\" = [[1, 1], [2, 4]]\n\
         backend = [{ kind = \"emu\", slice_instructions = 4000 }]",
        1,
    );
    let text_of = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(
        &exp,
        text_of.replace("[axes]", "[set]\n\"workload.ops\" = 1000\n[axes]"),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir), "-j", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = table(&out_dir);
    assert_eq!(
        rows[0][..5],
        ["run", "backend", "guest.vcpus", "workload.tasks", "rep"],
        "{rows:?}"
    );
    assert_eq!(rows[1][..4], ["r000", "emu/4000", "1", "1"], "{rows:?}");
    assert_eq!(rows[2][..4], ["r001", "emu/4000", "2", "4"], "{rows:?}");
    let runs = results(&out_dir);
    assert_eq!(runs.len(), 2);
    for ((id, r), (vcpus, tasks)) in runs.iter().zip([(1, 1), (2, 4)]) {
        let parsed = &r["config"]["parsed"];
        assert_eq!(parsed["guest"]["vcpus"], vcpus, "{id}");
        assert_eq!(parsed["workload"]["tasks"], tasks, "{id}");
        assert_eq!(parsed["workload"]["ops"], 1000, "{id}");
        assert_eq!(parsed["backend"]["slice_instructions"], 4000, "{id}");
        assert_eq!(r["guest"]["tasks_completed"], tasks, "{id}");
    }
    // A filter names one key of the joint axis.
    let out = apflab(&[
        "matrix",
        s(&exp),
        "--out",
        s(&dir.path().join("one")),
        "--filter",
        "workload.tasks=4",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(table(&dir.path().join("one")).len(), 2);
}

/// A far-memory config with fetch latencies drawn at random (`quick.toml`'s
/// mixed workload on one vCPU, log-normal latencies), as `base.toml`.
fn drawn_latency_base(dir: &Path) {
    let quick = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quick.toml"),
    )
    .unwrap()
    .replace("vcpus = 2", "vcpus = 1")
    .replace(
        "latency = { model = \"constant\", us = 50.0 }",
        "latency = { model = \"lognormal\", median_us = 50.0, sigma = 0.8 }\nseed = 5",
    );
    std::fs::write(dir.join("base.toml"), quick).unwrap();
}

#[test]
fn repetitions_draw_other_fetch_latencies_and_results_carry_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    drawn_latency_base(dir.path());
    let exp = dir.path().join("reps.toml");
    std::fs::write(
        &exp,
        "base = \"base.toml\"\nrepetitions = 3\n[axes]\n\"policy.module\" = [\"sync\"]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs = results(&out_dir);
    assert_eq!(runs.len(), 3);
    let seeds: Vec<(u64, u64)> = runs
        .iter()
        .map(|(_, r)| {
            let p = &r["config"]["parsed"];
            (
                p["seed"].as_u64().unwrap(),
                p["pager"]["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seeds, [(1, 5), (2, 6), (3, 7)]);
    // Each repetition drew its own fetch latencies: their means differ, and
    // so do the makespans.
    let mean = |r: &Value| r["pager"]["fetch_latency"]["mean_ns"].as_f64().unwrap();
    let (a, b, c) = (mean(&runs[0].1), mean(&runs[1].1), mean(&runs[2].1));
    assert!(a != b && b != c && a != c, "{a} {b} {c}");
    let makespan = |r: &Value| r["virtual_time_ns"].as_u64().unwrap();
    assert_ne!(makespan(&runs[0].1), makespan(&runs[1].1));
    // The source tree each came from.
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    for (_, r) in &runs {
        assert_eq!(r["source"]["commit"].as_str(), Some(head.as_str()), "{r}");
        assert!(r["source"]["dirty"].is_boolean(), "{r}");
    }
}

/// A sync and a paolo run of `drawn_latency_base` (the real results the
/// made-up experiments of [`made_experiment`] are built from).
fn sync_and_async_runs(dir: &Path) -> (Value, Value) {
    drawn_latency_base(dir);
    let exp = dir.join("one.toml");
    std::fs::write(
        &exp,
        "base = \"base.toml\"\n[axes]\n\"policy.module\" = [\"sync\", \"paolo\"]\n",
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = apflab(&["matrix", s(&exp), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load = |id: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(out_dir.join(id).join("result.json")).unwrap(),
        )
        .unwrap()
    };
    (load("r000"), load("r001"))
}

/// Results folder `made` of four seeds of the baseline `base` and of each
/// policy named in `changes` (a copy of the async run `async_run` whose
/// makespan is the baseline's changed by the seed's percentage), every run
/// marked as run by `backend`.
fn made_experiment(
    made: &Path,
    (base, async_run): (&Value, &Value),
    changes: &[(&str, [f64; 4])],
    backend: &str,
) {
    let write = |name: String, v: &Value| {
        std::fs::create_dir_all(made.join(&name)).unwrap();
        std::fs::write(made.join(name).join("result.json"), v.to_string()).unwrap();
    };
    for seed in 0..4u64 {
        let mut b = base.clone();
        b["config"]["parsed"]["seed"] = seed.into();
        b["config"]["parsed"]["backend"]["kind"] = backend.into();
        b["backend"] = backend.into();
        let t = b["virtual_time_ns"].as_u64().unwrap() as f64;
        write(format!("sync-{seed}"), &b);
        for (policy, change) in changes {
            let mut a = async_run.clone();
            a["config"]["parsed"]["seed"] = seed.into();
            a["config"]["parsed"]["backend"]["kind"] = backend.into();
            a["backend"] = backend.into();
            a["config"]["parsed"]["policy"]["module"]["name"] = (*policy).into();
            a["policy"]["module"] = (*policy).into();
            a["virtual_time_ns"] = ((t * (1.0 + change[seed as usize] / 100.0)) as u64).into();
            write(format!("{policy}-{seed}"), &a);
        }
    }
}

/// Fills `template` with `apflab paper` over the folders of `results`:
/// the filled text, or the failed command's output.
fn paper(results: &Path, template: &str) -> Result<String, std::process::Output> {
    let file = results.join("t.in.md");
    std::fs::write(&file, template).unwrap();
    let filled = results.join("t.md");
    let out = apflab(&[
        "paper",
        s(&file),
        "--results",
        s(results),
        "--out",
        s(&filled),
    ]);
    if out.status.code() != Some(0) {
        return Err(out);
    }
    Ok(std::fs::read_to_string(filled).unwrap())
}

#[test]
fn report_prints_no_difference_where_the_interval_holds_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (base, paolo) = sync_and_async_runs(dir.path());
    // Four seeds of the pair, built from the two real results: the async
    // run's makespan is the baseline's +1 %, -1 %, +0.5 %, -0.5 % (an
    // interval around 0), then +10 %, +11 %, +9 %, +10 % for a second
    // variant (an interval that excludes it).
    let made = dir.path().join("made");
    made_experiment(
        &made,
        (&base, &paolo),
        &[
            ("paolo", [1.0, -1.0, 0.5, -0.5]),
            ("adaptive", [10.0, 11.0, 9.0, 10.0]),
        ],
        "emu",
    );
    let md = dir.path().join("made.md");
    let out = apflab(&["report", s(&made), "--out", s(&md)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = std::fs::read_to_string(md).unwrap();
    let row = |policy: &str| {
        md.lines()
            .skip_while(|l| !l.starts_with("## Repetitions"))
            .find(|l| l.starts_with(&format!("| {policy} |")))
            .unwrap_or_else(|| panic!("no {policy} row in {md}"))
            .to_owned()
    };
    assert!(row("paolo").contains("| 4 |"), "{md}");
    assert!(row("paolo").contains("| no difference ("), "{md}");
    assert!(row("adaptive").contains("| +10.0 ± 1.3 % |"), "{md}");
    // The paper's ranking: shortest makespan first, `<` only where the
    // paired interval excludes 0.
    let ranked = paper(
        dir.path(),
        "{{ranking made policy.module.name=adaptive,sync}}\n\
         {{ranking made policy.module.name=sync,paolo,adaptive}}\n",
    )
    .unwrap_or_else(|out| panic!("{}", text(&out)));
    let lines: Vec<&str> = ranked.lines().collect();
    assert_eq!(lines[0], "sync < adaptive", "{ranked}");
    assert!(
        ["sync ≈ paolo < adaptive", "paolo ≈ sync < adaptive"].contains(&lines[1]),
        "{ranked}"
    );
    // The vCPU-time plot: one bar per config, the mean of its four runs.
    let svg = std::fs::read_to_string(dir.path().join("made-vcpu-time.svg")).unwrap();
    for policy in ["sync", "paolo", "adaptive"] {
        assert_eq!(
            svg.matches(&format!(" {policy}: ")).count(),
            1,
            "{policy}: {svg}"
        );
    }
    assert_eq!(svg.matches("(4 runs)").count(), 3, "{svg}");
}

#[test]
fn kendall_compares_two_backends_rankings_with_untold_pairs_as_ties() {
    let dir = tempfile::tempdir().unwrap();
    let (base, paolo) = sync_and_async_runs(dir.path());
    let runs = (&base, &paolo);
    // On "emu": sync ≈ paolo < adaptive (paolo's interval holds 0).
    let emu = [
        ("paolo", [1.0, -1.0, 0.5, -0.5]),
        ("adaptive", [10.0, 11.0, 9.0, 10.0]),
    ];
    made_experiment(&dir.path().join("emu"), runs, &emu, "emu");
    // The same order on "kvm", with other figures: τ_b = 1 (the tied pair
    // counts on neither side).
    let alike = [
        ("paolo", [2.0, -2.0, 1.0, -1.0]),
        ("adaptive", [30.0, 31.0, 29.0, 30.0]),
    ];
    made_experiment(&dir.path().join("alike"), runs, &alike, "kvm");
    // adaptive first: both of its pairs reversed, τ_b = -1.
    let reversed = [
        ("paolo", [1.0, -1.0, 0.5, -0.5]),
        ("adaptive", [-10.0, -11.0, -9.0, -10.0]),
    ];
    made_experiment(&dir.path().join("reversed"), runs, &reversed, "kvm");
    // sync < paolo < adaptive: the pair emu cannot tell apart is ordered
    // here, so τ_b = 2 / √(2 · 3).
    let finer = [
        ("paolo", [5.0, 6.0, 4.0, 5.0]),
        ("adaptive", [10.0, 11.0, 9.0, 10.0]),
    ];
    made_experiment(&dir.path().join("finer"), runs, &finer, "kvm");
    // paolo's changes against sync hold 0 (+137.5 ± 214 %), sync's against
    // paolo's do not (-48.8 ± 35.4 %): the pair is tied, as `ranking` (which
    // measures against the shorter mean) says, whichever config comes first.
    let skewed = [
        ("paolo", [40.0, 330.0, 130.0, 50.0]),
        ("adaptive", [1000.0, 1100.0, 900.0, 1000.0]),
    ];
    made_experiment(&dir.path().join("skewed"), runs, &skewed, "kvm");
    let filled = paper(
        dir.path(),
        "{{kendall emu alike /virtual_time_ns}}\n\
         {{kendall emu reversed /virtual_time_ns}}\n\
         {{kendall emu finer /virtual_time_ns}}\n\
         {{ranking skewed policy.module.name=sync,paolo,adaptive}}\n\
         {{kendall emu skewed /virtual_time_ns}}\n",
    );
    let filled = filled.unwrap_or_else(|out| panic!("{}", text(&out)));
    let lines: Vec<&str> = filled.lines().collect();
    assert_eq!(
        lines[0],
        "τ_b = +1.00 over 3 configs (3 pairs: 2 ordered alike, 0 reversed, 1 told apart on \
         one side only or neither)"
    );
    assert!(
        lines[1].starts_with("τ_b = −1.00 over 3 configs (3 pairs: 0 ordered alike, 2 reversed,"),
        "{filled}"
    );
    assert!(
        lines[2].starts_with("τ_b = +0.82 over 3 configs"),
        "{filled}"
    );
    assert!(
        lines[2].contains("2 ordered alike, 0 reversed, 1 told"),
        "{filled}"
    );
    assert_eq!(lines[3], "sync ≈ paolo < adaptive", "{filled}");
    assert!(
        lines[4].starts_with("τ_b = +1.00 over 3 configs (3 pairs: 2 ordered alike, 0 reversed,"),
        "{filled}"
    );

    // Bad input names the template's line and what is wrong, exit 2.
    std::fs::remove_dir_all(dir.path().join("finer").join("adaptive-2")).unwrap();
    for (template, expected) in [
        (
            "{{kendall emu}}",
            "expected `kendall EXPERIMENT OTHER-EXPERIMENT POINTER",
        ),
        (
            "{{kendall emu alike virtual_time_ns}}",
            "expected a JSON pointer",
        ),
        (
            "{{kendall emu nowhere /virtual_time_ns}}",
            "no results under",
        ),
        ("{{kendall emu alike /nope}}", "no number at `/nope`"),
        (
            "{{kendall emu alike /virtual_time_ns policy.module.name=sync}}",
            "expected at least two to rank",
        ),
        (
            "{{kendall emu alike /virtual_time_ns policy.module}}",
            "expected dotted.key=value",
        ),
        (
            "{{kendall emu finer /virtual_time_ns}}",
            "no run to pair it with has its seeds",
        ),
    ] {
        let out = paper(dir.path(), &format!("line 1\n{template}\n")).unwrap_err();
        assert_eq!(out.status.code(), Some(2), "{template}: {}", text(&out));
        assert!(
            text(&out).contains("t.in.md:2:"),
            "{template}: {}",
            text(&out)
        );
        assert!(text(&out).contains(expected), "{template}: {}", text(&out));
    }
    // A config one side never ran.
    made_experiment(
        &dir.path().join("fewer"),
        runs,
        &[("paolo", [1.0, -1.0, 0.5, -0.5])],
        "kvm",
    );
    let out = paper(dir.path(), "{{kendall emu fewer /virtual_time_ns}}\n").unwrap_err();
    assert!(
        text(&out).contains(
            "fewer has no run of its config (both experiments must run the same configs)"
        ),
        "{}",
        text(&out)
    );
}

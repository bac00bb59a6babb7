//! Tests of the ingest loop against a real directory (no FUSE): which sandboxes
//! appear, and epochs that resume after a restart or start anew.

use super::*;
use parking_lot::Mutex;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// Records what ingest reports.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Option<Arc<Timeline>>)>>);

impl Catalog for Recorder {
    fn sandbox_added(&self, name: &str, timeline: Arc<Timeline>) {
        self.0.lock().push((format!("+{name}"), Some(timeline)));
    }
    fn sandbox_removed(&self, name: &str) {
        self.0.lock().push((format!("-{name}"), None));
    }
    fn epoch_kept(&self, epoch: Arc<crate::store::EpochStore>) {
        self.0.lock().push((format!("={}", epoch.header().name), None));
    }
}

impl Recorder {
    fn names(&self) -> Vec<String> {
        self.0.lock().iter().map(|(n, _)| n.clone()).collect()
    }

    fn timeline(&self, name: &str) -> Arc<Timeline> {
        let entry = format!("+{name}");
        self.0.lock().iter().rev().find(|(n, _)| *n == entry).and_then(|(_, t)| t.clone()).expect("added")
    }
}

fn wait_for(recorder: &Recorder, entry: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !recorder.names().iter().any(|e| e == entry) {
        assert!(Instant::now() < deadline, "never saw {entry}: {:?}", recorder.names());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn store(root: &Path) -> Arc<Store> {
    Store::open(&root.join("state"), root, Some(1 << 30)).unwrap()
}

#[test]
fn only_sandboxes_with_valid_names_and_logs_appear() {
    let home = tempfile::tempdir().unwrap();
    let sandboxes = home.path().join("sandboxes");
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let max = "y".repeat(MAX_NAME_LEN);
    for name in ["web", long.as_str(), max.as_str()] {
        std::fs::create_dir_all(sandboxes.join(name).join("logs")).unwrap();
    }
    std::fs::create_dir_all(sandboxes.join(std::ffi::OsStr::from_bytes(b"bad\xff")).join("logs")).unwrap();
    std::fs::create_dir_all(sandboxes.join("no-logs-yet")).unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap();
    let mut seen = recorder.names();
    seen.sort();
    assert_eq!(seen, ["+web".to_string(), format!("+{max}")]);
    // A sandbox whose logs/ appears later is found; one that vanishes is removed.
    std::fs::create_dir(sandboxes.join("no-logs-yet").join("logs")).unwrap();
    wait_for(&recorder, "+no-logs-yet");
    std::fs::remove_dir_all(sandboxes.join("web")).unwrap();
    wait_for(&recorder, "-web");
    handle.stop();
}

#[test]
fn a_restart_resumes_the_epoch_and_a_recreated_sandbox_starts_anew() {
    let home = tempfile::tempdir().unwrap();
    let logs = home.path().join("sandboxes/web/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("kernel.log"), b"[    0.000001] one\n").unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap();
    let first = recorder.timeline("web");
    let (epoch, ino, size) = (first.epoch(), first.ino_base(), first.size());
    let bytes = first.read(0, usize::MAX).unwrap();
    handle.stop();
    assert!(size > 0);
    // Restarted: the same epoch, inode block and bytes; new lines follow.
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("kernel.log"))
        .unwrap()
        .write_all(b"[    0.000002] two\n")
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap();
    let again = recorder.timeline("web");
    assert_eq!((again.epoch(), again.ino_base()), (epoch, ino));
    let now = again.read(0, usize::MAX).unwrap();
    assert_eq!(&now[..bytes.len()], &bytes[..]);
    assert!(String::from_utf8_lossy(&now[bytes.len()..]).ends_with("kernel [    0.000002] two\n"));
    handle.stop();
    // Recreated under the same name: a new epoch, from offset 0.
    std::fs::remove_dir_all(home.path().join("sandboxes/web")).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("kernel.log"), b"[    0.000003] three\n").unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap();
    let fresh = recorder.timeline("web");
    assert_ne!(fresh.epoch(), epoch);
    assert!(fresh.ino_base() > ino);
    assert!(String::from_utf8_lossy(&fresh.read(0, usize::MAX).unwrap()).ends_with("kernel [    0.000003] three\n"));
    assert_eq!(fresh.read(0, usize::MAX).unwrap().iter().filter(|b| **b == b'\n').count(), 1);
    handle.stop();
}

#[test]
fn the_state_of_sandboxes_that_no_longer_exist_is_retired_and_kept() {
    let home = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        std::fs::create_dir_all(home.path().join("sandboxes").join(name).join("logs")).unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap().stop();
    std::fs::remove_dir_all(home.path().join("sandboxes/b")).unwrap();
    let s = store(home.path());
    assert_eq!(s.saved_epochs().len(), 2);
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), s.clone(), recorder.clone(), Demand::new()).unwrap();
    // b is kept for all.log, retired: never resumed, handed over as kept.
    let saved = s.saved_epochs();
    let retired: Vec<(String, bool)> = saved.iter().map(|e| (e.header.name.clone(), e.retired_ms.is_some())).collect();
    assert_eq!(retired, [("a".to_string(), false), ("b".to_string(), true)]);
    assert_eq!(recorder.names(), ["+a", "=b"]);
    handle.stop();
    drop(s);
    // At the next start it is handed over again, before any sandbox.
    let recorder = Arc::new(Recorder::default());
    spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap().stop();
    assert_eq!(recorder.names()[..2], ["=b", "+a"]);
}

#[test]
fn a_waiting_sandbox_whose_logs_appear_unseen_by_inotify_is_found_by_the_sweep() {
    // A tmpfs mounted over the waiting sandbox's directory: its logs/ is made where the
    // watch does not look, as when a watch could not be added or an event was lost.
    if unsafe { libc::geteuid() } != 0 {
        println!("msbfs-test SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("sandboxes").join("late");
    std::fs::create_dir_all(&dir).unwrap();
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(home.path(), store(home.path()), recorder.clone(), Demand::new()).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&dir).status().unwrap();
    assert!(mounted.success(), "mount tmpfs on {dir:?}");
    let _unmount = Unmount(&dir);
    std::fs::create_dir(dir.join("logs")).unwrap();
    wait_for(&recorder, "+late");
    handle.stop();
}

#[test]
fn in_turn_gives_every_name_once_before_any_twice() {
    let names: Vec<String> = (0..SWEEP_PER_TICK + 8).map(|i| format!("n{i:03}")).collect();
    let first = in_turn(names.iter(), "");
    assert_eq!(first, names[..SWEEP_PER_TICK]);
    let second = in_turn(names.iter(), first.last().unwrap());
    assert_eq!(second[..8], names[SWEEP_PER_TICK..]);
    assert_eq!(second[8..], names[..SWEEP_PER_TICK - 8]);
    let few: Vec<String> = vec!["a".into(), "b".into()];
    assert_eq!(in_turn(few.iter(), "a"), ["b", "a"]);
    assert!(in_turn(std::iter::empty(), "x").is_empty());
}

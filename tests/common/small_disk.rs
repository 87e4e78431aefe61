//! A disk that can really be filled, for the disk-full tests: shared by the integration tests
//! (`tests/common`) and the state store's unit tests (`src/state/store/tests.rs`, which
//! include this file by path), so there is one definition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tmpfs of `mb` MiB mounted on a temporary directory, unmounted on drop: a disk that can
/// really be filled. Mounting needs root, which the test machines (and CI) run as.
pub struct SmallDisk {
    /// The mount point.
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mount it.
    pub fn mount(mb: u32) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Self { dir }
    }

    /// Fill the disk to the last byte with one file, and keep it full (RocksDB frees files
    /// as it compacts; another writer takes that space at once) until [`Filler::free`].
    pub fn fill(&self) -> Filler {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let buf = vec![7u8; 1 << 16];
        while f.write_all(&buf).is_ok() {}
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                while f.write(&buf[..4096]).is_ok_and(|n| n > 0) {}
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Filler { path, stop, thread: Some(thread) }
    }
}

/// Keeps a [`SmallDisk`] full.
pub struct Filler {
    /// The filling file.
    path: std::path::PathBuf,
    /// Tells the thread to stop.
    stop: Arc<AtomicBool>,
    /// The thread taking any freed space.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Filler {
    /// Stop filling and delete the file.
    pub fn free(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("filler thread");
        }
        std::fs::remove_file(&self.path).expect("delete the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

//! A real nginx running a config on loopback, to compare sniroute's routing
//! with the program it replaces. nginx must be installed with its stream module
//! (Debian/Ubuntu: `apt-get install nginx libnginx-mod-stream`).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::{capture, poll, DEADLINE};

/// The line a config needs first so that `stream {}` exists: a `load_module` of
/// the stream module when this nginx has it as a dynamic module (Debian), or
/// nothing when it is built in. Found from `nginx -V`, not from a fixed path.
pub fn load_stream_module() -> String {
    let out = Command::new("nginx").arg("-V").output().unwrap_or_else(|e| {
        panic!("cannot run nginx ({e}): install it with `apt-get install nginx libnginx-mod-stream`")
    });
    // nginx -V writes to stderr.
    let build = String::from_utf8_lossy(&out.stderr).into_owned();
    let options: Vec<&str> = build.split_whitespace().collect();
    if options.contains(&"--with-stream") {
        return String::new();
    }
    assert!(
        options.contains(&"--with-stream=dynamic"),
        "this nginx has no stream module:\n{build}"
    );
    let modules = options
        .iter()
        .find_map(|o| o.strip_prefix("--modules-path="))
        .map(str::to_owned)
        .or_else(|| {
            options
                .iter()
                .find_map(|o| o.strip_prefix("--prefix="))
                .map(|p| format!("{p}/modules"))
        })
        .unwrap_or_else(|| panic!("nginx -V names no modules path:\n{build}"));
    let module = Path::new(&modules).join("ngx_stream_module.so");
    assert!(
        module.exists(),
        "{} is missing: install it with `apt-get install libnginx-mod-stream`",
        module.display()
    );
    format!("load_module {};", module.display())
}

/// nginx in the foreground, one process (no master, no workers), so that
/// killing it frees its ports at once.
pub struct Nginx {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Nginx {
    /// Starts nginx on `dir/nginx.conf` and waits until every `ready` address
    /// accepts connections.
    pub fn start(dir: &Path, ready: &[SocketAddr]) -> Nginx {
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg("stderr")
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {};",
                dir.join("nginx.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = capture(child.stderr.take().unwrap());
        let mut nginx = Nginx { child, log };
        for addr in ready {
            let up = poll(DEADLINE, || {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    panic!("nginx exited with {status}:\n{}", nginx.log());
                }
                TcpStream::connect(addr).ok()
            });
            assert!(
                up.is_some(),
                "nginx does not listen on {addr}:\n{}",
                nginx.log()
            );
        }
        nginx
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

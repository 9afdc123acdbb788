//! The status page and `/healthz` on the metrics bind, read with curl and with
//! a real headless browser (Debian's chromium, driven over its DevTools pipe).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An HTTP GET with curl; returns (status code, headers lowercased, body).
fn curl(url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-D", "-", url])
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_lowercase(), body.to_owned())
}

/// The `<tr>` of the status page that lists server `addr`.
fn row(html: &str, addr: SocketAddr) -> String {
    let needle = format!(">{addr}<");
    html.split("<tr")
        .find(|r| r.contains(&needle))
        .map(|r| r.split("</tr>").next().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no row for {addr} in:\n{html}"))
}

/// The state word of server `addr` on the page.
fn state(html: &str, addr: SocketAddr) -> String {
    let r = row(html, addr);
    ["up", "down", "draining", "leaving"]
        .into_iter()
        .find(|w| r.contains(&format!(">{w}</span>")))
        .unwrap_or_else(|| panic!("no state word in {r}"))
        .to_owned()
}

/// One HTTP request through sniroute for `host`; returns what came back.
async fn through(listen: SocketAddr, host: &str) -> String {
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8_lossy(&read_all(&mut c).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_every_pool_and_server_and_healthz_is_503_during_the_drain() {
    let a1 = Upstream::start("127.0.0.2", "a1", Mode::Hold).await;
    let a2 = Upstream::start("127.0.0.3", "a2", Mode::Hold).await;
    let backup = Upstream::start("127.0.0.2", "b", Mode::Http).await;
    // Listening but never accepting: connects succeed (the kernel's backlog)
    // until it is dropped, then they are refused.
    let x = StdListener::bind("127.0.0.3:0").unwrap();
    let x_addr = x.local_addr().unwrap();
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        "[timeouts]\nshutdown = \"30s\"\n[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\ndefault = \"alpha\"\n\
         [listeners.routes]\n\"alpha.test\" = \"alpha\"\n\"~^(?<n>beta)[0-9]*[.]test$\" = \"beta\"\n\
         [upstreams.alpha]\nservers = [\"{}\", \"{}\"]\n\
         [upstreams.beta]\nmax_fails = 1\nfail_timeout = \"60s\"\n\
         servers = [\"{x_addr}\", {{ addr = \"{}\", backup = true }}]\n",
        a1.addr, a2.addr, backup.addr
    );
    let mut proxy = Sniroute::start(&config);
    proxy.wait_log("serving GET /metrics");
    let status_url = format!("http://{metrics}/status");

    let (code, head, html) = curl(&status_url);
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store\r\n"), "{head}");
    assert!(html.contains(&format!("sniroute {}", env!("CARGO_PKG_VERSION"))));
    assert!(
        html.contains(">alpha<") && html.contains(">beta<"),
        "{html}"
    );
    for addr in [a1.addr, a2.addr, backup.addr, x_addr] {
        assert_eq!(state(&html, addr), "up", "{addr}");
    }
    assert!(row(&html, backup.addr).contains(">backup<"));
    // The regex key comes from the config: escaped, never markup.
    assert!(html.contains("~^(?&lt;n&gt;beta)[0-9]*[.]test$"), "{html}");
    assert!(!html.contains("(?<n>"));
    assert!(html.contains(&listen.to_string()));

    // X stops; the next client of beta finds it refused and goes on to the backup.
    drop(x);
    // A client may come back empty on a loaded machine (seen once in a full
    // run, not yet explained; the access log line is printed then): up to
    // three clients, one of which must reach the backup.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = through(listen, "beta7.test").await;
        let reached = answer.ends_with("b host=beta7.test");
        answers.push(answer);
        if reached {
            break;
        }
    }
    assert!(
        answers
            .last()
            .is_some_and(|a| a.ends_with("b host=beta7.test")),
        "{answers:?}\n{}",
        proxy.log()
    );
    proxy.wait_log("server marked down");
    let (_, _, html) = curl(&status_url);
    assert_eq!(state(&html, x_addr), "down");
    let x_row = row(&html, x_addr);
    assert!(
        x_row.contains("max_fails (passive), retried in "),
        "{x_row}"
    );
    assert_eq!(state(&html, backup.addr), "up");
    assert!(html.contains("1 down"), "{html}");

    let (code, head, body) = curl(&format!("http://{metrics}/healthz"));
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(head.contains("cache-control: no-store\r\n"), "{head}");

    // A client held open keeps the drain going while we look.
    let mut held = TcpStream::connect(listen).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    eventually("the held connection upstream", || {
        a1.open() + a2.open() == 1
    })
    .await;
    let (_, _, html) = curl(&status_url);
    assert!(html.contains("1 open connection(s)"), "{html}");

    proxy.signal("TERM");
    // The drain begins just after its log line: poll for the answer, bounded.
    let healthz = poll(DEADLINE, || {
        Some(curl(&format!("http://{metrics}/healthz"))).filter(|(code, _, _)| *code != 200)
    })
    .expect("/healthz never left 200 after SIGTERM");
    assert_eq!((healthz.0, healthz.2.as_str()), (503, "draining\n"));
    let (code, _, html) = curl(&status_url);
    assert_eq!(code, 200);
    assert!(html.contains("draining: shutting down"), "{html}");
    let (code, _, body) = curl(&format!("http://{metrics}/metrics"));
    assert_eq!(code, 200);
    assert!(body.contains("sniroute_build_info"));
    assert_eq!(curl(&format!("http://{metrics}/nope")).0, 404);
    assert!(proxy.child_alive(), "the drain must still be going on");

    held.shutdown().await.unwrap();
    drop(held);
    assert_eq!(proxy.wait_exit(DEADLINE).code(), Some(0));
}

/// How long the browser gets for each DevTools command, and for the page to
/// show what we wait for.
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

/// Headless chromium, driven over `--remote-debugging-pipe`: DevTools protocol
/// messages as NUL-terminated JSON, commands written to its fd 3, responses and
/// events read from its fd 4. Killed on drop, helpers included, so a failing
/// test leaves no browser behind.
struct Browser {
    child: Child,
    commands: File,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // Close-on-exec: no other child spawned meanwhile (sniroute, curl) inherits them.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (their_commands, commands) = pipe();
        let (responses, their_responses) = pipe();
        let (cmd_fd, resp_fd) = (their_commands.as_raw_fd(), their_responses.as_raw_fd());
        let stderr = File::create(profile.path().join("stderr.log")).unwrap();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: chromium forks helpers (zygote, renderers),
            // and the guard ends them all.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 3 and 4 first, so that neither dup2 below
                // overwrites the other end; dup2 clears close-on-exec on 3 and 4.
                let cmd = libc::fcntl(cmd_fd, libc::F_DUPFD_CLOEXEC, 10);
                let resp = libc::fcntl(resp_fd, libc::F_DUPFD_CLOEXEC, 10);
                if cmd < 0 || resp < 0 || libc::dup2(cmd, 3) < 0 || libc::dup2(resp, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "chromium is not installed: this test drives Debian's `chromium` package \
                 (apt-get install --no-install-recommends chromium), which CI installs"
            ),
            Err(e) => panic!("cannot start chromium: {e}"),
        };
        // Our copies of the child's ends go, so its exit ends the reader with EOF.
        drop((their_commands, their_responses));
        let (tx, messages) = mpsc::channel();
        let mut from = File::from(responses);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice(&message[..end]) else {
                        continue;
                    };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            commands: File::from(commands),
            messages,
            next_id: 0,
            profile,
        }
    }

    /// Sends `method` (to the page of `session`, if given) and waits for its
    /// answer: the result, or the protocol's error as text.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("chromium is gone ({e}); {}", self.stderr()));
        let start = Instant::now();
        loop {
            let left = BROWSER_DEADLINE.saturating_sub(start.elapsed());
            let value = match self.messages.recv_timeout(left) {
                Ok(value) => value,
                Err(e) => panic!("no answer to {method} ({e}); {}", self.stderr()),
            };
            // Events and late answers to earlier, timed-out calls are skipped.
            if value["id"].as_u64() != Some(id) {
                continue;
            }
            return match value.get("error") {
                Some(error) => Err(error.to_string()),
                None => Ok(value["result"].clone()),
            };
        }
    }

    fn stderr(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        format!(
            "chromium stderr (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) of the group this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page opened in the browser, attached to with its own session.
struct Tab {
    session: String,
}

impl Tab {
    fn open(browser: &mut Browser, url: &str) -> Tab {
        let target = browser
            .call(None, "Target.createTarget", json!({ "url": url }))
            .unwrap();
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .unwrap();
        Tab {
            session: attached["sessionId"].as_str().unwrap().to_owned(),
        }
    }

    /// The page's visible text, as the user sees it (`innerText`); `None` while
    /// the page is (re)loading.
    fn text(&self, browser: &mut Browser) -> Option<String> {
        let result = browser
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": "document.body ? document.body.innerText : ''", "returnByValue": true }),
            )
            .ok()?;
        result["result"]["value"].as_str().map(str::to_owned)
    }

    /// Saves a PNG screenshot of the page as `name` under the test's target dir.
    fn screenshot(&self, browser: &mut Browser, name: &str) -> std::path::PathBuf {
        let shot = browser
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .unwrap();
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// The state word the page shows for `addr`: the cell after the server's own,
/// read from the visible text (cells of a row are tab-separated in innerText).
fn state_in_text(text: &str, addr: SocketAddr) -> Option<String> {
    let addr = addr.to_string();
    let line = text.lines().find(|l| l.starts_with(&addr))?;
    let cell = line.split('\t').nth(1)?;
    Some(cell.split_whitespace().next()?.to_owned())
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Polls the page's text until `f` accepts it, for at most `BROWSER_DEADLINE`.
fn wait_for_text(
    browser: &mut Browser,
    tab: &Tab,
    what: &str,
    mut f: impl FnMut(&str) -> bool,
) -> String {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(text) = tab.text(browser) {
            if f(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            start.elapsed() < BROWSER_DEADLINE,
            "the page never showed {what}; last text:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_refreshes_itself_to_show_a_server_going_down() {
    let backup = Upstream::start("127.0.0.2", "b", Mode::Http).await;
    let other = Upstream::start("127.0.0.2", "o", Mode::Http).await;
    let x = StdListener::bind("127.0.0.3:0").unwrap();
    let x_addr = x.local_addr().unwrap();
    let (listen, metrics) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        "[metrics]\nbind = \"{metrics}\"\n\
         [[listeners]]\nbind = \"{listen}\"\nprotocol = \"http\"\ndefault = \"other\"\n\
         [listeners.routes]\n\"web.test\" = \"web\"\n\
         [upstreams.web]\nmax_fails = 1\nfail_timeout = \"60s\"\n\
         servers = [\"{x_addr}\", {{ addr = \"{}\", backup = true }}]\n\
         [upstreams.other]\nservers = [\"{}\"]\n",
        backup.addr, other.addr
    );
    let proxy = Sniroute::start(&config);
    proxy.wait_log("serving GET /metrics");

    // The browser's waits are blocking: keep them off the runtime's workers,
    // which serve the upstreams.
    let shots = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        let tab = Tab::open(&mut browser, &format!("http://{metrics}/status"));
        let text = wait_for_text(&mut browser, &tab, "the server up", |t| {
            state_in_text(t, x_addr).as_deref() == Some("up")
        });
        assert!(
            text.contains("pool web") && text.contains("pool other"),
            "{text}"
        );
        assert_eq!(state_in_text(&text, other.addr).as_deref(), Some("up"));
        let up = tab.screenshot(&mut browser, "status-up.png");

        // X stops; a client through sniroute finds it refused: marked down.
        drop(x);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(through(listen, "web.test"));
        assert!(answer.ends_with("b host=web.test"), "{answer}");
        proxy.wait_log("server marked down");

        // No navigation from here: only the page's own refresh can show it.
        let text = wait_for_text(&mut browser, &tab, "the server down", |t| {
            state_in_text(t, x_addr).as_deref() == Some("down")
        });
        let line = text
            .lines()
            .find(|l| l.starts_with(&x_addr.to_string()))
            .unwrap();
        assert!(line.contains("max_fails"), "{line}");
        let down = tab.screenshot(&mut browser, "status-down.png");
        drop(browser);
        drop(proxy);
        (up, down)
    })
    .await
    .unwrap();
    println!("screenshot, server up: {}", shots.0.display());
    println!("screenshot, server down: {}", shots.1.display());
}

//! What the tests that kill the real binary share: starting `semel demo`
//! on ports of its own, and waiting for it to answer.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::Client;

/// Starts `semel demo` on ports of its own (port 0 for the broker and the
/// metrics), so a demo a user runs on the default ports is no obstacle. Its
/// stderr goes to `demo.log`, which [`connect`] shows if it stops.
pub fn start(dir: &Path) -> Child {
    let _ = std::fs::remove_file(dir.join("demo.json"));
    let log = std::fs::File::create(dir.join("demo.log")).expect("create demo.log");
    Command::new(env!("CARGO_BIN_EXE_semel"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--population",
            "2000",
            "--data-dir",
        ])
        .arg(dir)
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel demo")
}

/// Waits for the demo to answer; fails with its log if it stopped.
pub async fn connect(child: &mut Child, dir: &Path, who: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dir.join("demo.json").exists()
            && let Ok(config) = semel_server::demo::client_config(dir, who)
            && let Ok(client) = Client::connect(&config).await
        {
            return client;
        }
        if let Some(status) = child.try_wait().expect("check the demo") {
            panic!(
                "semel demo stopped ({status}):\n{}",
                std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the demo did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

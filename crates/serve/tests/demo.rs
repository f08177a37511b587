//! The demo page in a real headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it): the page loads a user's history, the retriever's top 10 and the
//! PALR reranking from the API, and a screenshot is kept as an artifact
//! (`$LLMREC_ARTIFACTS_DIR`, default `target/artifacts`, `demo-page.png`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(|c| PathBuf::from("/usr/bin").join(c))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "the demo page test needs Chromium: `apt-get install chromium` (.ci/run installs it)"
        )
    })
}

fn headless(profile: &std::path::Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=15000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn the_demo_page_shows_history_retrieval_and_reranking_in_chromium() {
    let s = common::start(Duration::ZERO, 8);
    let url = format!("{}/", s.base);
    let profile = s.dir.path().join("chromium-profile");
    let out = headless(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page did not finish: {}\n{}",
        dom,
        String::from_utf8_lossy(&out.stderr)
    );
    let list = |id: &str| -> usize {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}"));
        let end = dom[start..].find("</ol>").unwrap() + start;
        dom[start..end].matches("<li").count()
    };
    // The example user (u0) has 5 of the 12 items; the retriever and the
    // reranking show the other 7 (10 asked for).
    assert_eq!(list("history"), 5, "{dom}");
    assert_eq!(list("retrieved"), 7, "{dom}");
    assert_eq!(list("reranked"), 7, "{dom}");
    // The reranking puts the LLM's two picks first: the retriever's 2nd, then 1st.
    let ids = |id: &str| -> Vec<String> {
        let start = dom.find(&format!("id=\"{id}\"")).unwrap();
        let end = dom[start..].find("</ol>").unwrap() + start;
        dom[start..end]
            .split("data-id=\"")
            .skip(1)
            .map(|x| x.split('"').next().unwrap().to_string())
            .collect()
    };
    let (r, p) = (ids("retrieved"), ids("reranked"));
    assert_eq!((&p[0], &p[1]), (&r[1], &r[0]), "{dom}");
    assert!(dom.contains("Item "), "{dom}");
    assert!(!dom.contains("class=\"error\""), "{dom}");

    let dir = std::env::var_os("LLMREC_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("demo-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,800")
        .arg(&url)
        .output()
        .expect("chromium runs");
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "{} bytes",
        png.len()
    );
}

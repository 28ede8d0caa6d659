//! Commands that read must not create a store where there is none: they say where
//! they looked and fail, so `queue list` run in the wrong directory is not an
//! empty queue.

use super::{outpost, text};

const READ_ONLY: &[&[&str]] = &[
    &["queue", "list"],
    &["queue", "show", "0123456789ABCDEF0123"],
    &["queue", "summary"],
    &["queue", "retry", "--all"],
    &["user", "list"],
    &["user", "remove", "alice"],
    &["domain", "list"],
    &["domain", "dns", "example.com"],
    &["suppress", "list"],
    &["stats"],
    &["cluster", "status"],
];

#[test]
fn read_only_commands_in_an_empty_directory_create_nothing_and_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = std::path::absolute(dir.path().join("outpost-data")).unwrap();
    for args in READ_ONLY {
        let out = outpost(dir.path(), None, args);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("no Outpost store in {}", data_dir.display())),
            "{args:?}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
}

#[test]
fn a_new_store_is_announced_and_an_empty_user_list_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = outpost(dir.path(), None, &["domain", "add", "example.com"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let database = std::path::absolute(dir.path().join("outpost-data/outpost.db")).unwrap();
    assert!(
        text(&out.stderr).contains(&format!("created a new store: {}", database.display())),
        "{}",
        text(&out.stderr)
    );
    let out = outpost(dir.path(), None, &["user", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no users"),
        "{}",
        text(&out.stdout)
    );
    // A relative data directory is not obvious: the store used is named.
    assert!(
        text(&out.stderr).contains(&format!("store: {}", database.display())),
        "{}",
        text(&out.stderr)
    );
    // SQLite serves one node: the cluster's status says so.
    let out = outpost(dir.path(), None, &["cluster", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.starts_with("single node"), "{status}");
    assert!(
        status.ends_with("0 node(s), 0 recipient(s) in the queue\n"),
        "{status}"
    );
}

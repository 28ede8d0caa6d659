//! Tenant isolation, credentials and login throttling.

use super::*;

#[tokio::test]
async fn tenants_see_only_their_own() {
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let path = format!("/v1/messages/{}", ids[0]);
    assert_eq!(server.get(&path, ALICE).await.0, 200);
    assert_eq!(
        server.get(&path, ROOT).await.0,
        200,
        "admins see everything"
    );
    assert_eq!(server.get(&path, BOB).await.0, 404);
    assert_eq!(server.get(&path, ("alice", "wrong")).await.0, 401);
    assert_eq!(server.get(&path, ("nobody", "wrong")).await.0, 401);
    let (status, _) = server.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(server.all_events(ALICE, 10).await.len(), 1);
    assert_eq!(server.all_events(ROOT, 10).await.len(), 1);
    assert!(server.all_events(BOB, 10).await.is_empty());

    let (status, err) = server
        .post(
            "/v1/messages",
            BOB,
            json!({"from": "b@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (403, Some("from")),
        "{err}"
    );
    let add = |domain: &str, address: &str| json!({"domain": domain, "address": address});
    let (status, _) = server
        .post(
            "/v1/suppressions",
            ALICE,
            add("alice.example", "q@x.example"),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = server
        .post(
            "/v1/suppressions",
            ALICE,
            add("alice.example", "q@x.example"),
        )
        .await;
    assert_eq!(status, 200, "already there");
    let (status, err) = server
        .post("/v1/suppressions", BOB, add("alice.example", "r@x.example"))
        .await;
    assert_eq!((status, err["field"].as_str()), (403, Some("domain")));
    let count = |v: Value| v["suppressions"].as_array().unwrap().len();
    assert_eq!(count(server.get("/v1/suppressions", BOB).await.1), 0);
    assert_eq!(count(server.get("/v1/suppressions", ROOT).await.1), 1);
    let remove = "/v1/suppressions?domain=alice.example&address=q@x.example";
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(BOB), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(ALICE), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(ALICE), None)
        .await;
    assert_eq!(status, 404);

    // Repeated failures from one address lock it out, even with the right password.
    for _ in 0..3 {
        assert_eq!(server.get(&path, ("alice", "guess")).await.0, 401);
    }
    let (status, err) = server.get(&path, ALICE).await;
    assert_eq!(status, 429, "{err}");
}

/// A sending domain's reputation and pause are its users' (and admins') to see:
/// `GET /v1/stats` lists only the caller's domains, and the pause's events reach
/// the users of that domain, not the others.
#[tokio::test]
async fn a_paused_domain_is_seen_by_its_users_only() {
    let server = Server::start(Options::default()).await;
    let pause = outpost::store::DomainPause {
        domain: "alice.example".into(),
        since: 1_700_000_000_000,
        reason: "complaint rate 0.50%".into(),
    };
    assert!(server.running.store.pause_domain(pause).await.unwrap());
    let domains = |stats: &Value| {
        stats["sending_domains"]
            .as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (status, alice) = server.get("/v1/stats?windows=1h", ALICE).await;
    assert_eq!(status, 200);
    assert_eq!(domains(&alice), ["alice.example"]);
    let seen = &alice["sending_domains"]["alice.example"];
    assert_eq!(seen["paused_since"], 1_700_000_000_000_i64);
    assert_eq!(seen["pause_reason"], "complaint rate 0.50%");
    assert_eq!(
        domains(&server.get("/v1/stats", ROOT).await.1),
        ["alice.example"]
    );
    assert!(domains(&server.get("/v1/stats", BOB).await.1).is_empty());

    let paused = |events: Vec<Value>| {
        events
            .into_iter()
            .filter(|e| e["event"] == "domain_paused")
            .map(|e| (e["domain"].clone(), e["reply"].clone()))
            .collect::<Vec<_>>()
    };
    let expected = vec![(json!("alice.example"), json!("complaint rate 0.50%"))];
    assert_eq!(paused(server.all_events(ALICE, 10).await), expected);
    assert_eq!(paused(server.all_events(ROOT, 10).await), expected);
    assert!(paused(server.all_events(BOB, 10).await).is_empty());
}

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

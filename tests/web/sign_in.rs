//! Sign-in, sign-out, the shared login throttle and the session cookie.

use super::*;

#[tokio::test]
async fn pages_need_a_session_and_sign_in_sets_a_strict_cookie() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut browser = Browser::new(&server);

    let page = browser.get("/messages?q=x").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/login?next=/messages%3Fq%3Dx")
    );
    let form = browser.get("/login?next=/messages").await;
    assert_eq!(form.status, 200);
    form.assert_contains(r#"name="username""#)
        .assert_contains(r#"name="password""#)
        .assert_contains(r#"name="next" value="&#x2f;messages""#);

    let page = browser.sign_in(ALICE).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/")));
    let session = browser
        .set_cookies
        .iter()
        .find(|c| c.starts_with("outpost_session=") && !c.contains("Max-Age=0"))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    let overview = browser.get("/").await;
    assert_eq!(overview.status, 200);
    overview
        .assert_contains("alice")
        .assert_contains("Overview");

    // Signing out ends the session on the server, not only in the browser.
    let token = browser.cookies["outpost_session"].clone();
    let csrf = overview.csrf();
    let out = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/login")));
    browser.cookies.insert("outpost_session".into(), token);
    assert_eq!(browser.get("/").await.status, 303);
}

#[tokio::test]
async fn wrong_passwords_stay_on_the_form_then_lock_the_address_for_api_and_dashboard() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut browser = Browser::new(&server);
    for _ in 0..MAX_FAILURES {
        let page = browser.sign_in((ALICE.0, "wrong")).await;
        assert_eq!(page.status, 401);
        page.assert_contains("Wrong user name or password")
            .assert_contains(r#"value="alice""#);
        assert!(!browser.cookies.contains_key("outpost_session"));
    }
    // The right password is now refused too, here and on the API: one throttle.
    let page = browser.sign_in(ALICE).await;
    assert_eq!(page.status, 429);
    page.assert_contains("Too many failed sign-ins");
    let api = reqwest::Client::new()
        .get(server.url("/v1/suppressions"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 429);
}

#[tokio::test]
async fn a_login_post_from_elsewhere_is_refused() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut browser = Browser::new(&server);
    // No login cookie: the form did not come from this dashboard.
    let page = browser
        .post(
            "/login",
            &[
                ("csrf", "forged"),
                ("username", ALICE.0),
                ("password", ALICE.1),
            ],
        )
        .await;
    assert_eq!(page.status, 403);
    // A next= elsewhere is not followed after sign-in.
    let csrf = browser.get("/login").await.csrf();
    let page = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", "//evil.example/"),
                ("username", ALICE.0),
                ("password", ALICE.1),
            ],
        )
        .await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/")));
}

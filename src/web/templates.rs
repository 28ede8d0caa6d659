//! The page templates, embedded in the binary and loaded once. Undefined
//! variables are errors (strict): the HTTP tests, which draw every page, catch a
//! misspelt name instead of it showing as an empty cell.

use minijinja::{Environment, UndefinedBehavior, Value};
use std::sync::OnceLock;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("messages.html", include_str!("templates/messages.html")),
    ("message.html", include_str!("templates/message.html")),
    ("queue.html", include_str!("templates/queue.html")),
    ("domains.html", include_str!("templates/domains.html")),
    (
        "suppressions.html",
        include_str!("templates/suppressions.html"),
    ),
    ("users.html", include_str!("templates/users.html")),
    ("user.html", include_str!("templates/user.html")),
    ("webhooks.html", include_str!("templates/webhooks.html")),
];

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("embedded templates parse (checked by the tests)");
        }
        env
    })
}

/// Renders template `name`. A rendering error is a bug in a template: it is
/// logged and answered as a short page rather than a panic.
pub fn render_bare(name: &str, context: Value) -> String {
    match environment()
        .get_template(name)
        .and_then(|t| t.render(context))
    {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(template = name, error = %e, "dashboard template failed");
            "<!doctype html><title>Error</title><p>This page could not be drawn; the server log says why.</p>".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            environment().get_template(name).unwrap();
        }
    }

    #[test]
    fn values_are_escaped() {
        let html = render_bare(
            "login.html",
            minijinja::context! { error => "<script>x</script>", csrf => "t", next => "/", username => "\"><b>" },
        );
        assert!(
            html.contains("&lt;script&gt;x&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>") && !html.contains("<b>"));
    }
}

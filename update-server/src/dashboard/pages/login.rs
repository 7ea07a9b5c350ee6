//! The login page: one field for the admin or the read-only token.

use maud::{Markup, html};

use super::{PageOptions, Section, layout};

/// Why the login page is shown again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginNotice {
    /// First visit.
    None,
    /// The token was not accepted.
    WrongToken,
    /// Just logged out.
    LoggedOut,
}

/// The login form.
pub fn render(notice: LoginNotice) -> Markup {
    layout(
        None,
        Section::Login,
        "Log in",
        PageOptions::default(),
        html! {
            div.login.card {
                h1 { "Platte dashboard" }
                @match notice {
                    LoginNotice::WrongToken => div.banner.error #login-error { "That token was not accepted." },
                    LoginNotice::LoggedOut => div.banner.notice #logged-out { "You are logged out." },
                    LoginNotice::None => {},
                }
                form #login-form method="post" action="/ui/login" {
                    label for="token" { "Admin or read-only token" }
                    input #token type="password" name="token" required autocomplete="off" autofocus;
                    button #login type="submit" { "Log in" }
                }
                p.sub {
                    "The admin token is in " code { "admin-token" } " in the server's data directory, "
                    "the read-only token in " code { "read-only-token" } "."
                }
            }
        },
    )
}

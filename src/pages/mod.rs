//! One component per route.

mod auth_form;
pub mod dashboard;
pub mod login;
pub mod signup;

pub use dashboard::DashboardPage;
pub use login::LoginPage;
pub use signup::SignupPage;

"""
Signing in at mail providers that refuse passwords (Microsoft, Google, or a
custom OAuth provider): provider profiles and their options, the token
client, the "Continue with ..." sign-in and its callback, and refreshing the
provider's tokens for pooled IMAP and SMTP (XOAUTH2, OAUTHBEARER).
"""

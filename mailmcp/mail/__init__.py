"""
Talking to mail servers: the IMAP client and its connection pool
(`mailmcp.mail.imap`), SMTP submission, SASL mechanisms, MIME reading and
composing, IMAP search compilation, the live login check, and the send
policies (intents, allow-list, rate) that guard every message sent.
"""

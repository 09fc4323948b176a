"""Teams on one deployment: named keys (stored hashed, reloaded on change or SIGHUP), quotas per key enforced by
a token-bucket limiter (in-process or shared through Redis), OpenAI's `x-ratelimit-*` headers, usage per team."""

//! Request heads shared by the suites (parse.rs, wsgi.rs), so they measure the same input.

/// The smallest valid HTTP/1.1 request.
pub const MINIMAL_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// What a desktop browser sends for a page.
pub const BROWSER_GET: &[u8] = b"GET /articles/2024/http-parsing?ref=home&utm_source=feed HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: none\r\n\
Cookie: session=4f2a9c1e7b; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n\r\n";

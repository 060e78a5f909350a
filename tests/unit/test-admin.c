/* test-admin.c - the admin listener's "ADDRESS:PORT" setting. */
#include "admin.h"

#include "tap.h"

static void good(const char *spec, const char *want_addr, unsigned want_port)
{
	char addr[64] = "";
	unsigned port = 0;
	int rc = admin_parse_listen(spec, addr, sizeof addr, &port);

	ok(rc == 0 && !strcmp(addr, want_addr) && port == want_port, "'%s' is %s port %u", spec,
	   want_addr, want_port);
}

static void bad(const char *spec, const char *what)
{
	char addr[64] = "untouched";
	unsigned port = 7;

	ok(admin_parse_listen(spec, addr, sizeof addr, &port) < 0 && port == 7, "%s is refused",
	   what);
}

int main(void)
{
	good("127.0.0.1:9100", "127.0.0.1", 9100);
	good("[::1]:9100", "::1", 9100);
	good("localhost:1", "localhost", 1);
	good("0.0.0.0:65535", "0.0.0.0", 65535);
	good("[2001:db8::1]:80", "2001:db8::1", 80);

	bad(NULL, "NULL");
	bad("", "an empty value");
	bad("127.0.0.1", "an address without a port");
	bad("127.0.0.1:", "an empty port");
	bad(":9100", "a port without an address");
	bad("127.0.0.1:0", "port 0");
	bad("127.0.0.1:65536", "port 65536");
	bad("127.0.0.1:91x", "a port with junk after it");
	bad("127.0.0.1:-1", "a negative port");
	bad("[::1]9100", "a bracketed address without ':' after it");
	bad("[::1:9100", "an unclosed bracket");
	bad("[]:9100", "empty brackets");
	{
		char small[4];
		unsigned port = 0;

		ok(admin_parse_listen("127.0.0.1:9100", small, sizeof small, &port) < 0,
		   "an address longer than the buffer is refused");
	}
	return done_testing();
}

/*
 * floor.c: the floor peer of `make bench-compare`. A single-threaded epoll
 * server that answers just enough SMTP for loopmx-bench and smtp-source to
 * complete their dialogs, and does no other work: no parsing beyond the
 * first four letters of a command, no allocation beyond one small struct per
 * connection, one read and at most one write per readable event. Its CPU per
 * session is the practical lower bound on this kernel for any server that
 * speaks SMTP over TCP; loopmx's figures are read as a ratio to it.
 *
 * Replies: 220 on connect, 250 to EHLO/HELO and to every command it does not
 * know, 354 to DATA, 250 after the final dot, 221 to QUIT (then close).
 * It listens on 127.0.0.1 only.
 *
 * Build and run:  gcc -O2 -o floor floor.c && ./floor 24600
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 70000 /* descriptors above this are closed at once */
#define LINE_MAX_LEN 1024

/* session is what the floor remembers of a connection. */
struct session {
	int in_data;  /* between 354 and the final dot */
	int eod;      /* progress through CR LF . CR LF, 0..4 */
	int len;      /* bytes of the current command line */
	char line[LINE_MAX_LEN];
};

static struct session *sessions[MAX_FD];

static void drop(int fd) {
	close(fd);
	free(sessions[fd]);
	sessions[fd] = NULL;
}

/* put appends a reply to out, writing out first if it would not fit. */
static void put(int fd, char *out, int *used, size_t cap, const char *reply) {
	size_t n = strlen(reply);
	if (*used + n > cap) {
		if (write(fd, out, *used) < 0) { /* the next read sees the error */ }
		*used = 0;
	}
	memcpy(out + *used, reply, n);
	*used += n;
}

/*
 * body_byte advances the end-of-data matcher by one byte of message text
 * and returns 1 when the byte completes CR LF . CR LF. State 2 means "just
 * after CR LF", which is also where the body starts.
 */
static int body_byte(struct session *s, char c) {
	switch (c) {
	case '\r': s->eod = s->eod == 3 ? 4 : 1; break;
	case '\n':
		if (s->eod == 4) { s->eod = 0; return 1; }
		s->eod = s->eod == 1 ? 2 : 0;
		break;
	case '.': s->eod = s->eod == 2 ? 3 : 0; break;
	default: s->eod = 0;
	}
	return 0;
}

/* serve handles one readable event; it returns 0 once fd is closed. */
static int serve(int fd, char *in, size_t in_cap, char *out, size_t out_cap) {
	struct session *s = sessions[fd];
	ssize_t r = read(fd, in, in_cap);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 1;
	if (r <= 0) {
		drop(fd);
		return 0;
	}
	int used = 0, quit = 0;
	for (ssize_t i = 0; i < r && !quit; i++) {
		char c = in[i];
		if (s->in_data) {
			if (body_byte(s, c)) {
				s->in_data = 0;
				put(fd, out, &used, out_cap, "250 queued\r\n");
			}
			continue;
		}
		if (c != '\n') {
			if (s->len < LINE_MAX_LEN - 1)
				s->line[s->len++] = c;
			continue;
		}
		s->line[s->len] = '\0';
		if (!strncasecmp(s->line, "DATA", 4)) {
			s->in_data = 1;
			s->eod = 2;
			put(fd, out, &used, out_cap, "354 go\r\n");
		} else if (!strncasecmp(s->line, "QUIT", 4)) {
			put(fd, out, &used, out_cap, "221 bye\r\n");
			quit = 1;
		} else if (!strncasecmp(s->line, "EHLO", 4) || !strncasecmp(s->line, "HELO", 4)) {
			put(fd, out, &used, out_cap, "250 floor\r\n");
		} else {
			put(fd, out, &used, out_cap, "250 ok\r\n");
		}
		s->len = 0;
	}
	if (used > 0 && write(fd, out, used) < 0) { /* the next read sees the error */ }
	if (quit) {
		drop(fd);
		return 0;
	}
	return 1;
}

int main(int argc, char **argv) {
	int port = argc > 1 ? atoi(argv[1]) : 24600;
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 4096) != 0) {
		perror("floor: listen on 127.0.0.1");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);

	static char in[65536], out[8192];
	struct epoll_event events[256];
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd != ls) {
				serve(fd, in, sizeof in, out, sizeof out);
				continue;
			}
			/* Accept everything waiting: the floor does not spread load. */
			for (;;) {
				int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
				if (c < 0)
					break;
				if (c >= MAX_FD) {
					close(c);
					continue;
				}
				sessions[c] = calloc(1, sizeof(struct session));
				if (write(c, "220 floor ESMTP\r\n", 17) < 0) { /* the read sees it */ }
				struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
			}
		}
	}
}

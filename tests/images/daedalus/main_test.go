package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func env(values map[string]string) func(string) string {
	return func(name string) string { return values[name] }
}

func newServer(t *testing.T, values map[string]string, args ...string) *server {
	t.Helper()
	cfg, err := parseConfig(args, env(values), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return &server{cfg: cfg, hostname: "pod-1"}
}

func get(t *testing.T, h http.Handler, target, host string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	if host != "" {
		req.Host = host
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestHealthz(t *testing.T) {
	for _, tc := range []struct {
		behavior string
		draining bool
		want     int
	}{
		{"serve", false, http.StatusOK},
		{"crash-once", false, http.StatusOK},
		{"never-ready", false, http.StatusServiceUnavailable},
		{"serve", true, http.StatusServiceUnavailable},
	} {
		s := newServer(t, map[string]string{"BEHAVIOR": tc.behavior})
		s.draining.Store(tc.draining)
		code, body := get(t, s.handler(), "/healthz", "")
		if code != tc.want {
			t.Errorf("%s (draining %v): /healthz = %d %q, want %d", tc.behavior, tc.draining, code, body, tc.want)
		}
		if code == http.StatusOK && body != "ok\n" {
			t.Errorf("/healthz body = %q", body)
		}
	}
}

func TestPage(t *testing.T) {
	s := newServer(t, map[string]string{"PAGE": "hello <world>", "VERSION": "v2"})
	code, body := get(t, s.handler(), "/posts/1", "lethain.com")
	if code != http.StatusOK {
		t.Fatalf("page = %d", code)
	}
	for _, want := range []string{
		"daedalus stand-in", "hello &lt;world&gt;", ">v2<", ">lethain.com<", ">/posts/1<", ">pod-1<",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
}

func TestNeverReadyStillServesPages(t *testing.T) {
	s := newServer(t, map[string]string{"BEHAVIOR": "never-ready"})
	if code, body := get(t, s.handler(), "/", "x.test"); code != http.StatusOK || !strings.Contains(body, "daedalus stand-in") {
		t.Fatalf("page = %d %q", code, body)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	s := newServer(t, map[string]string{"VERSION": "env", "PAGE": "env"}, "-version", "flag", "-page", "flag")
	if s.cfg.version != "flag" || s.cfg.page != "flag" {
		t.Fatalf("config = %+v", s.cfg)
	}
	if d := newServer(t, nil); d.cfg.version != version || d.cfg.port != "8080" || d.cfg.behavior != "serve" {
		t.Fatalf("defaults = %+v", d.cfg)
	}
}

func TestDelay(t *testing.T) {
	s := newServer(t, nil)
	start := time.Now()
	if code, _ := get(t, s.handler(), "/?delay=50ms", ""); code != http.StatusOK {
		t.Fatalf("delayed page = %d", code)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("delay not honoured")
	}
	if code, _ := get(t, s.handler(), "/?delay=2h", ""); code != http.StatusBadRequest {
		t.Fatalf("overlong delay = %d", code)
	}
}

func TestBadConfig(t *testing.T) {
	for _, values := range []map[string]string{
		{"BEHAVIOR": "explode"}, {"PORT": "http"}, {"SHUTDOWN_DELAY": "soon"},
		{"ERROR_RATE": "1.5"}, {"ERROR_RATE": "some"}, {"ERROR_RATE": "NaN"}, {"SLOW": "-1s"}, {"FAIL_AFTER": "later"},
		{"CRASH_AFTER": "x"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), nil, env(values), io.Discard, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", values, code, stderr.String())
		}
	}
}

func TestRequirements(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // serve nothing: only the checks before serving matter
	dir := t.TempDir()
	uid := strconv.Itoa(os.Getuid())
	for _, c := range []struct {
		values map[string]string
		code   int
	}{
		{map[string]string{"REQUIRE_WRITABLE": dir + "," + dir}, 0},
		{map[string]string{"REQUIRE_WRITABLE": filepath.Join(dir, "missing")}, 1},
		{map[string]string{"REQUIRE_UID": uid}, 0},
		{map[string]string{"REQUIRE_UID": uid + "1"}, 1},
		{map[string]string{"REQUIRE_UID": "someone"}, 2},
	} {
		c.values["PORT"], c.values["SHUTDOWN_DELAY"] = "0", "0s"
		if code := run(ctx, nil, env(c.values), io.Discard, io.Discard); code != c.code {
			t.Errorf("%v: exit %d, want %d", c.values, code, c.code)
		}
	}
}

func TestKeepFile(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	kept := filepath.Join(dir, "kept")
	for _, version := range []string{"v1", "v2"} {
		values := map[string]string{"KEEP_FILE": kept, "VERSION": version, "PORT": "0", "SHUTDOWN_DELAY": "0s"}
		if code := run(ctx, nil, env(values), io.Discard, io.Discard); code != 0 {
			t.Fatalf("%s: exit %d", version, code)
		}
	}
	hostname, _ := os.Hostname()
	s := newServer(t, map[string]string{"KEEP_FILE": kept})
	code, body := get(t, s.handler(), "/kept", "blog.example.test")
	if want := hostname + " v1\n" + hostname + " v2\n"; code != http.StatusOK || body != want {
		t.Fatalf("/kept: %d %q, want %q", code, body, want)
	}
	values := map[string]string{"KEEP_FILE": filepath.Join(dir, "missing", "kept"), "PORT": "0"}
	if code := run(ctx, nil, env(values), io.Discard, io.Discard); code != 1 {
		t.Fatalf("an unwritable keep file: exit %d, want 1", code)
	}
}

func TestCrash(t *testing.T) {
	var stdout bytes.Buffer
	if code := run(context.Background(), nil, env(map[string]string{"BEHAVIOR": "crash"}), &stdout, io.Discard); code != 1 {
		t.Fatalf("crash exited %d", code)
	}
	if !strings.Contains(stdout.String(), "crash") {
		t.Fatalf("crash said %q", stdout.String())
	}
}

func TestCrashOnce(t *testing.T) {
	logf := func(string, ...any) {}
	marker := filepath.Join(t.TempDir(), "daedalus-crashed-once")
	if !crashOnce(marker, logf) {
		t.Fatal("first start did not crash")
	}
	if crashOnce(marker, logf) {
		t.Fatal("restart crashed again")
	}
	if crashOnce(filepath.Join(t.TempDir(), "missing", "marker"), logf) {
		t.Fatal("crashed although the marker cannot be written")
	}
	// The whole program: exit 1, then serve until stopped.
	values := map[string]string{"BEHAVIOR": "crash-once", "CRASH_MARKER": marker + "2", "PORT": "0"}
	if code := run(context.Background(), nil, env(values), io.Discard, io.Discard); code != 1 {
		t.Fatalf("first run exited %d", code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	values["SHUTDOWN_DELAY"] = "0s"
	if code := run(ctx, nil, env(values), io.Discard, io.Discard); code != 0 {
		t.Fatalf("second run exited %d", code)
	}
	if _, err := os.Stat(marker + "2"); err != nil {
		t.Fatal(err)
	}
}

// SIGTERM (the context ending) lets in-flight requests finish, keeps
// answering during the shutdown delay with /healthz failing, then returns nil.
func TestGracefulShutdown(t *testing.T) {
	s := newServer(t, map[string]string{"SHUTDOWN_DELAY": "300ms"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, ln, nil, t.Logf) }()

	inflight := make(chan error, 1)
	go func() {
		resp, err := http.Get(base + "/?delay=500ms")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "daedalus stand-in") {
				err = &unexpected{resp.StatusCode}
			}
		}
		inflight <- err
	}()
	time.Sleep(100 * time.Millisecond)
	stop()
	time.Sleep(100 * time.Millisecond)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("not answering during the shutdown delay: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/healthz while draining = %d", resp.StatusCode)
	}
	if err := <-inflight; err != nil {
		t.Fatalf("in-flight request: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return")
	}
	if _, err := client.Get(base + "/healthz"); err == nil {
		t.Fatal("still answering after shutdown")
	}
}

// Pages fail as configured while /healthz stays 200: what a health-only
// rollout gate cannot see.
func TestErrorRateIsSpreadEvenlyAndHealthStaysOK(t *testing.T) {
	for _, tc := range []struct {
		rate   string
		failed int // of 20 pages
	}{{"0", 0}, {"0.2", 4}, {"0.5", 10}, {"1", 20}} {
		s := newServer(t, map[string]string{"ERROR_RATE": tc.rate, "VERSION": "v9"})
		failed, streak := 0, 0
		for i := 0; i < 20; i++ {
			code, body := get(t, s.handler(), "/", "")
			if code == http.StatusInternalServerError {
				failed++
				streak++
				if !strings.Contains(body, "v9") {
					t.Errorf("the error page does not name the version: %q", body)
				}
			} else {
				streak = 0
			}
			if tc.rate == "0.2" && streak > 1 {
				t.Errorf("rate 0.2: two failures in a row at page %d", i)
			}
		}
		if failed != tc.failed {
			t.Errorf("rate %s: %d of 20 pages failed, want %d", tc.rate, failed, tc.failed)
		}
		if code, _ := get(t, s.handler(), "/healthz", ""); code != http.StatusOK {
			t.Errorf("rate %s: /healthz = %d", tc.rate, code)
		}
	}
}

func TestSlowPages(t *testing.T) {
	s := newServer(t, map[string]string{"SLOW": "60ms"})
	start := time.Now()
	if code, _ := get(t, s.handler(), "/", ""); code != http.StatusOK {
		t.Fatalf("slow page = %d", code)
	}
	if time.Since(start) < 60*time.Millisecond {
		t.Fatal("SLOW not honoured")
	}
	start = time.Now()
	if code, _ := get(t, s.handler(), "/healthz", ""); code != http.StatusOK || time.Since(start) > 50*time.Millisecond {
		t.Fatal("/healthz must stay fast")
	}
}

func TestFailAfter(t *testing.T) {
	s := newServer(t, map[string]string{"FAIL_AFTER": "1m"})
	s.started = time.Now()
	if code, _ := get(t, s.handler(), "/", ""); code != http.StatusOK {
		t.Fatalf("page before FAIL_AFTER = %d", code)
	}
	s.started = time.Now().Add(-2 * time.Minute)
	if code, _ := get(t, s.handler(), "/", ""); code != http.StatusInternalServerError {
		t.Fatalf("page after FAIL_AFTER = %d", code)
	}
	if code, _ := get(t, s.handler(), "/healthz", ""); code != http.StatusOK {
		t.Fatalf("/healthz after FAIL_AFTER = %d", code)
	}
}

func TestCrashAfter(t *testing.T) {
	values := map[string]string{"CRASH_AFTER": "100ms", "PORT": "0", "SHUTDOWN_DELAY": "0s"}
	start := time.Now()
	var stderr bytes.Buffer
	// A stand-in that never crashes is stopped after 5 s, and exits 0.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if code := run(ctx, nil, env(values), io.Discard, &stderr); code != 1 {
		t.Fatalf("CRASH_AFTER exited %d", code)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Fatal("crashed before its time")
	}
	if !strings.Contains(stderr.String(), "crashing on purpose") {
		t.Fatalf("crash said %q", stderr.String())
	}
}

type unexpected struct{ code int }

func (u *unexpected) Error() string { return http.StatusText(u.code) }

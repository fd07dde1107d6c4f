// Command daedalus-standin stands in for the daedalus blog binary in the
// integration tests: a small HTTP server whose failure modes are chosen by
// configuration, so tests can drive health-gated rollouts for real.
//
// Configuration (a flag wins over its environment variable):
//
//	-behavior  BEHAVIOR        serve (default), crash, crash-once, never-ready
//	-port      PORT            listen port (default 8080)
//	-page      PAGE            text shown on every page (default empty)
//	-version   VERSION         version shown on every page (default: build's)
//	-crash-marker CRASH_MARKER crash-once's marker (default /dev/shm/daedalus-crashed-once)
//	-require-writable REQUIRE_WRITABLE
//	                           comma-separated directories it must be able to
//	                           write a file in at start, or it exits 1, as
//	                           blogs that keep a cache or temporary files do
//	-require-uid REQUIRE_UID   the uid it must run as, or it exits 1, as
//	                           images whose files belong to their own user do
//	-keep-file KEEP_FILE     a file (on a persistent volume) it appends
//	                           "<pod> <version>" to at start, or it exits 1;
//	                           GET /kept answers the file, as blogs that keep
//	                           posts or uploads do
//	-shutdown-delay SHUTDOWN_DELAY
//	                           how long to keep serving after SIGTERM, with
//	                           /healthz failing, before closing the listener
//	                           (default 3s; lets endpoints catch up)
//
// Misbehaviours that pass the health check but fail users (a broken
// template, a bad migration), for canary analysis to catch:
//
//	-error-rate ERROR_RATE     share of pages (0 to 1) answered 500, spread
//	                           evenly: 0.2 is every fifth page, 1 every page
//	-slow SLOW                 every page answered this late (a Go duration)
//	-fail-after FAIL_AFTER     every page answered 500 from this long after
//	                           start on (a version that fails late)
//	-crash-after CRASH_AFTER   exit with status 1 this long after start
//
// GET /healthz answers 200 "ok" (503 when never-ready or shutting down);
// every other path answers a small HTML page with "daedalus stand-in", the
// page text, the version, the request's Host and the pod's hostname. A
// `delay` query parameter (a Go duration, at most 60s) holds the answer back,
// to test that in-flight requests survive a shutdown.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const (
	behaviorServe      = "serve"
	behaviorCrash      = "crash"
	behaviorCrashOnce  = "crash-once"
	behaviorNeverReady = "never-ready"

	maxDelay        = 60 * time.Second
	shutdownTimeout = 25 * time.Second
)

type config struct {
	behavior      string
	port          string
	page          string
	version       string
	crashMarker   string
	shutdownDelay time.Duration
	writable      []string
	uid           int // -1: any
	keepFile      string
	errorRate     float64
	slow          time.Duration
	failAfter     time.Duration // 0: never
	crashAfter    time.Duration // 0: never
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	env := func(name, fallback string) string {
		if value := getenv(name); value != "" {
			return value
		}
		return fallback
	}
	var cfg config
	flags := flag.NewFlagSet("daedalus-standin", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.StringVar(&cfg.behavior, "behavior", env("BEHAVIOR", behaviorServe),
		"serve, crash, crash-once or never-ready (env BEHAVIOR)")
	flags.StringVar(&cfg.port, "port", env("PORT", "8080"), "listen port (env PORT)")
	flags.StringVar(&cfg.page, "page", getenv("PAGE"), "text shown on every page (env PAGE)")
	flags.StringVar(&cfg.version, "version", env("VERSION", version),
		"version shown on every page (env VERSION)")
	flags.StringVar(&cfg.crashMarker, "crash-marker",
		env("CRASH_MARKER", "/dev/shm/daedalus-crashed-once"),
		"file that marks crash-once's first start (env CRASH_MARKER)")
	writable := flags.String("require-writable", getenv("REQUIRE_WRITABLE"),
		"comma-separated directories it must write to at start (env REQUIRE_WRITABLE)")
	uid := flags.String("require-uid", getenv("REQUIRE_UID"),
		"the uid it must run as (env REQUIRE_UID)")
	flags.StringVar(&cfg.keepFile, "keep-file", getenv("KEEP_FILE"),
		"file it appends its pod and version to at start, served at /kept (env KEEP_FILE)")
	delay := flags.String("shutdown-delay", env("SHUTDOWN_DELAY", "3s"),
		"serving time after SIGTERM before the listener closes (env SHUTDOWN_DELAY)")
	errorRate := flags.String("error-rate", env("ERROR_RATE", "0"),
		"share of pages answered 500, 0 to 1 (env ERROR_RATE)")
	slow := flags.String("slow", env("SLOW", "0s"), "delay of every page (env SLOW)")
	failAfter := flags.String("fail-after", env("FAIL_AFTER", "0s"),
		"every page answered 500 from this long after start on (env FAIL_AFTER)")
	crashAfter := flags.String("crash-after", env("CRASH_AFTER", "0s"),
		"exit 1 this long after start (env CRASH_AFTER)")
	if err := flags.Parse(args); err != nil {
		return cfg, err
	}
	if flags.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", flags.Args())
	}
	switch cfg.behavior {
	case behaviorServe, behaviorCrash, behaviorCrashOnce, behaviorNeverReady:
	default:
		return cfg, fmt.Errorf("unknown behavior %q (serve, crash, crash-once, never-ready)", cfg.behavior)
	}
	if port, err := strconv.Atoi(cfg.port); err != nil || port < 0 || port > 65535 {
		return cfg, fmt.Errorf("invalid port %q", cfg.port)
	}
	var err error
	if cfg.shutdownDelay, err = time.ParseDuration(*delay); err != nil || cfg.shutdownDelay < 0 {
		return cfg, fmt.Errorf("invalid shutdown delay %q", *delay)
	}
	if cfg.errorRate, err = strconv.ParseFloat(*errorRate, 64); err != nil ||
		!(cfg.errorRate >= 0 && cfg.errorRate <= 1) { // NaN fails both
		return cfg, fmt.Errorf("invalid error rate %q (0 to 1)", *errorRate)
	}
	for _, d := range []struct {
		name  string
		raw   string
		value *time.Duration
	}{{"slow", *slow, &cfg.slow}, {"fail-after", *failAfter, &cfg.failAfter}, {"crash-after", *crashAfter, &cfg.crashAfter}} {
		if *d.value, err = time.ParseDuration(d.raw); err != nil || *d.value < 0 {
			return cfg, fmt.Errorf("invalid %s %q", d.name, d.raw)
		}
	}
	for _, dir := range strings.Split(*writable, ",") {
		if dir != "" {
			cfg.writable = append(cfg.writable, dir)
		}
	}
	cfg.uid = -1
	if *uid != "" {
		if cfg.uid, err = strconv.Atoi(*uid); err != nil || cfg.uid < 0 {
			return cfg, fmt.Errorf("invalid uid %q", *uid)
		}
	}
	return cfg, nil
}

// crashOnce says whether this is the pod's first start, leaving a marker
// for the next one. A marker it cannot write means serving: a stand-in that
// crashes forever would test something else.
func crashOnce(marker string, logf func(string, ...any)) bool {
	file, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	switch {
	case err == nil:
		_ = file.Close()
		logf("crash-once: first start (created %s), exiting with status 1", marker)
		return true
	case errors.Is(err, fs.ErrExist):
		logf("crash-once: %s exists, so this is a restart: serving", marker)
	default:
		logf("crash-once: cannot write %s (%v): serving", marker, err)
	}
	return false
}

type server struct {
	cfg      config
	hostname string
	draining atomic.Bool
	started  time.Time
	pages    atomic.Int64 // pages asked for so far, for -error-rate
}

// failing says whether this page answers 500: every page once -fail-after
// has passed, else the ERROR_RATE share, spread evenly (page n fails when
// the running count of failures due rises with it).
func (s *server) failing(now time.Time) bool {
	if s.cfg.failAfter > 0 && now.Sub(s.started) >= s.cfg.failAfter {
		return true
	}
	n := s.pages.Add(1)
	return int64(float64(n)*s.cfg.errorRate) > int64(float64(n-1)*s.cfg.errorRate)
}

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html>
<head><meta charset="utf-8"><title>daedalus stand-in</title></head>
<body>
<h1>daedalus stand-in</h1>
<p>page: <span id="page">{{.Page}}</span></p>
<p>version: <span id="version">{{.Version}}</span></p>
<p>host: <span id="host">{{.Host}}</span></p>
<p>path: <span id="path">{{.Path}}</span></p>
<p>pod: <span id="pod">{{.Pod}}</span></p>
</body>
</html>
`))

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	if s.cfg.keepFile != "" {
		mux.HandleFunc("/kept", s.kept)
	}
	mux.HandleFunc("/", s.page)
	return mux
}

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.cfg.behavior == behaviorNeverReady || s.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// kept answers the keep file: one line per start of any pod that shares it.
func (s *server) kept(w http.ResponseWriter, _ *http.Request) {
	content, err := os.ReadFile(s.cfg.keepFile)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(content)
}

// keep appends "<pod> <version>" to the keep file.
func keep(path, hostname, version string) error {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(file, "%s %s\n", hostname, version)
	if closeErr := file.Close(); err == nil {
		err = closeErr
	}
	return err
}

func (s *server) page(w http.ResponseWriter, r *http.Request) {
	if raw := r.URL.Query().Get("delay"); raw != "" {
		delay, err := time.ParseDuration(raw)
		if err != nil || delay < 0 || delay > maxDelay {
			http.Error(w, "delay: a duration between 0 and 60s", http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if s.cfg.slow > 0 {
		select {
		case <-time.After(s.cfg.slow):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("X-Daedalus-Version", s.cfg.version)
	if s.failing(time.Now()) {
		http.Error(w, "daedalus stand-in: failing on purpose (version "+s.cfg.version+")",
			http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = pageTemplate.Execute(w, map[string]string{
		"Page": s.cfg.page, "Version": s.cfg.version, "Host": r.Host,
		"Path": r.URL.Path, "Pod": s.hostname,
	})
}

// serve answers on ln until ctx ends (or crash fires: it stops at once), then drains: /healthz fails and
// keep-alives stop for the shutdown delay (new connections are still
// accepted while endpoints catch up), then the listener closes and in-flight
// requests finish.
func (s *server) serve(
	ctx context.Context, ln net.Listener, crash <-chan time.Time, logf func(string, ...any),
) error {
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	failed := make(chan error, 1)
	go func() { failed <- srv.Serve(ln) }()
	select {
	case err := <-failed:
		return err
	case <-crash:
		_ = srv.Close() // no draining: a crash drops what it was doing
		return fmt.Errorf("CRASH_AFTER=%s: crashing on purpose", s.cfg.crashAfter)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	srv.SetKeepAlivesEnabled(false)
	logf("shutting down: serving %s more, then finishing in-flight requests", s.cfg.shutdownDelay)
	time.Sleep(s.cfg.shutdownDelay)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logf("shut down cleanly")
	return nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	logf := func(format string, a ...any) {
		fmt.Fprintf(stdout, "daedalus-standin: "+format+"\n", a...)
	}
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "daedalus-standin: %v\n", err)
		return 2
	}
	if cfg.uid >= 0 && os.Getuid() != cfg.uid {
		logf("REQUIRE_UID=%d: running as uid %d, exiting with status 1", cfg.uid, os.Getuid())
		return 1
	}
	for _, dir := range cfg.writable {
		file, err := os.CreateTemp(dir, "daedalus-*")
		if err != nil {
			logf("REQUIRE_WRITABLE: cannot write in %s (%v), exiting with status 1", dir, err)
			return 1
		}
		_ = file.Close()
		logf("REQUIRE_WRITABLE: wrote %s", file.Name())
	}
	switch cfg.behavior {
	case behaviorCrash:
		logf("BEHAVIOR=crash: exiting with status 1")
		return 1
	case behaviorCrashOnce:
		if crashOnce(cfg.crashMarker, logf) {
			return 1
		}
	}
	hostname, _ := os.Hostname()
	if cfg.keepFile != "" {
		if err := keep(cfg.keepFile, hostname, cfg.version); err != nil {
			logf("KEEP_FILE: %v, exiting with status 1", err)
			return 1
		}
		logf("KEEP_FILE: appended to %s", cfg.keepFile)
	}
	s := &server{cfg: cfg, hostname: hostname, started: time.Now()}
	var crash <-chan time.Time // nil: never
	if cfg.crashAfter > 0 {
		crash = time.After(cfg.crashAfter)
	}
	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		fmt.Fprintf(stderr, "daedalus-standin: %v\n", err)
		return 1
	}
	logf("version %s, behavior %s, listening on %s", cfg.version, cfg.behavior, ln.Addr())
	if err := s.serve(ctx, ln, crash, logf); err != nil {
		fmt.Fprintf(stderr, "daedalus-standin: %v\n", err)
		return 1
	}
	return 0
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

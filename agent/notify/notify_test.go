package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/parryhq/parry/agent/api"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parryhq/parry/response"
)

func blockEvent() Event {
	return Event{Kind: KindDecision, Title: "block 203.0.113.7/32 for 1h", Decision: &response.Decision{
		ID: "d1", Action: response.ActionBlock, Targets: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}}}
}

func start(t *testing.T, n *Notifier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type request struct {
	body   []byte
	header http.Header
}

func TestDelivered(t *testing.T) {
	got := make(chan request, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- request{b, r.Header}
	}))
	defer srv.Close()
	n, err := New(Config{Webhooks: []Webhook{
		{Name: "ops", URL: srv.URL + "/hook", Headers: map[string]string{"Authorization": "Bearer t0k"}},
		{Name: "chat", URL: srv.URL + "/slack", Format: "slack"},
	}}, Options{Host: "web1"})
	if err != nil {
		t.Fatal(err)
	}
	start(t, n)
	if !n.Notify(blockEvent()) {
		t.Fatal("Notify refused")
	}
	var generic, slack request
	for range 2 {
		r := within(t, got, "delivery")
		if r.header.Get("Authorization") != "" {
			generic = r
		} else {
			slack = r
		}
	}
	var ev Event
	if err := json.Unmarshal(generic.body, &ev); err != nil || ev.Host != "web1" || ev.Decision == nil ||
		ev.Decision.Targets[0].String() != "203.0.113.7/32" || ev.Time.IsZero() {
		t.Errorf("generic body %s (%v)", generic.body, err)
	}
	var sl map[string]string
	if err := json.Unmarshal(slack.body, &sl); err != nil || !strings.Contains(sl["text"], "block 203.0.113.7/32") || len(sl) != 1 {
		t.Errorf("slack body %s (%v)", slack.body, err)
	}
	if got := slackText(Event{Kind: KindFinding, Title: "<!channel> & <http://x|click>"}); strings.ContainsAny(got, "<>") {
		t.Errorf("slack markup not escaped: %q", got)
	}
	if generic.header.Get("Content-Type") != "application/json" {
		t.Errorf("content type %q", generic.header.Get("Content-Type"))
	}
}

func TestRetriedAfter500(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	ok := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		ok <- struct{}{}
	}))
	defer srv.Close()
	results := make(chan string, 8)
	n, _ := New(Config{Webhooks: []Webhook{{URL: srv.URL}}, Backoff: api.Duration(time.Millisecond)},
		Options{Observe: func(_, r string) { results <- r }})
	start(t, n)
	n.Notify(blockEvent())
	within(t, ok, "second attempt")
	if r1, r2 := within(t, results, "result"), within(t, results, "result"); r1 != ResultRetry || r2 != ResultDelivered {
		t.Errorf("results %s, %s; want retry, delivered", r1, r2)
	}
	st := n.Stats()[0]
	if st.Retries != 1 || st.Delivered != 1 || st.Failed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// A hung endpoint must not slow the caller: Notify returns at once, and a
// full queue drops (and counts) instead of waiting.
func TestCallerUnaffectedWhileServerHangs(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	n, _ := New(Config{Webhooks: []Webhook{{URL: srv.URL}}, QueueSize: 4, Timeout: api.Duration(time.Hour)}, Options{})
	start(t, n)
	n.Notify(blockEvent())
	within(t, entered, "the hanging request")

	done := make(chan int)
	go func() {
		accepted := 0
		for range 100 {
			if n.Notify(blockEvent()) {
				accepted++
			}
		}
		done <- accepted
	}()
	if accepted := within(t, done, "100 Notify calls against a hung endpoint"); accepted != 4 {
		t.Errorf("accepted %d, want 4 (the queue size)", accepted)
	}
	if st := n.Stats()[0]; st.Dropped != 96 || st.Queued != 4 {
		t.Errorf("stats %+v, want 96 dropped, 4 queued", st)
	}
}

type fakeRT struct {
	status int
	times  []time.Time
}

func (f *fakeRT) RoundTrip(r *http.Request) (*http.Response, error) {
	f.times = append(f.times, time.Now())
	return &http.Response{StatusCode: f.status, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
}

func TestBackoffSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fakeRT{status: http.StatusServiceUnavailable}
		n, _ := New(Config{Webhooks: []Webhook{{URL: "https://hooks.example/x"}}, Retries: 3,
			Backoff: api.Duration(time.Second), MaxBackoff: api.Duration(3 * time.Second)}, Options{Client: &http.Client{Transport: rt},
			Logger: slog.New(slog.DiscardHandler)})
		ctx, cancel := context.WithCancel(t.Context())
		go n.Run(ctx)
		t0 := time.Now()
		n.Notify(blockEvent())
		time.Sleep(time.Minute) // fake time: lets every retry run
		synctest.Wait()
		var offs []time.Duration
		for _, at := range rt.times {
			offs = append(offs, at.Sub(t0))
		}
		want := []time.Duration{0, time.Second, 3 * time.Second, 6 * time.Second}
		if len(offs) != len(want) {
			t.Fatalf("attempts at %v, want %v", offs, want)
		}
		for i := range want {
			if offs[i] != want[i] {
				t.Errorf("attempts at %v, want %v", offs, want)
				break
			}
		}
		if st := n.Stats()[0]; st.Failed != 1 || st.Retries != 3 {
			t.Errorf("stats %+v", st)
		}
		// A 4xx is permanent: one attempt, no retry.
		rt.status, rt.times = http.StatusBadRequest, nil
		n.Notify(blockEvent())
		time.Sleep(time.Minute)
		synctest.Wait()
		if len(rt.times) != 1 || n.Stats()[0].Failed != 2 {
			t.Errorf("4xx: %d attempts, stats %+v", len(rt.times), n.Stats()[0])
		}
		cancel()
	})
}

func TestSecretsNeverLogged(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	results := make(chan string, 4)
	n, err := New(Config{Webhooks: []Webhook{{
		URL:     "http://user:SECRETPW@127.0.0.1:1/hooks/SECRETPATH?token=SECRETQ",
		Headers: map[string]string{"Authorization": "Bearer SECRETH"}}}, Retries: 1, Backoff: api.Duration(time.Millisecond)},
		Options{Logger: log, Observe: func(_, r string) { results <- r }})
	if err != nil {
		t.Fatal(err)
	}
	start(t, n)
	n.Notify(blockEvent())
	for r := ""; r != ResultFailed; r = within(t, results, "failure") {
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if strings.Contains(out, "SECRET") || !strings.Contains(out, "http://127.0.0.1:1/<redacted>") {
		t.Errorf("log leaks or lacks the redacted target:\n%s", out)
	}
	if st := n.Stats()[0]; strings.Contains(st.Target, "SECRET") {
		t.Errorf("stats leak: %+v", st)
	}
	bad := Config{Webhooks: []Webhook{{URL: "ftp://x/SECRET"}}}
	if err := bad.Validate(); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("validate: %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestFiltering(t *testing.T) {
	n, _ := New(Config{Webhooks: []Webhook{{URL: "http://127.0.0.1:1/"}}, Events: []string{KindFinding, KindLockdown}}, Options{})
	if n.Wants(KindDecision, "") || n.Wants(KindFinding, "medium") || !n.Wants(KindFinding, "critical") || !n.Wants(KindLockdown, "") {
		t.Error("filter wrong")
	}
	n.Notify(Event{Kind: KindFinding, Severity: "low"})
	if st := n.Stats()[0]; st.Queued != 0 {
		t.Errorf("low finding queued: %+v", st)
	}
	off, _ := New(Config{}, Options{})
	if off.Enabled() || !off.Notify(blockEvent()) {
		t.Error("no webhooks must be a silent no-op")
	}
}

func TestValidate(t *testing.T) {
	bad := []Config{
		{Webhooks: []Webhook{{URL: "notaurl"}}},
		{Webhooks: []Webhook{{URL: "http://a/", Format: "xml"}}},
		{Webhooks: []Webhook{{URL: "http://a/", Headers: map[string]string{"X-A": "a\r\nb"}}}},
		{Webhooks: []Webhook{{URL: "http://a/", Headers: map[string]string{"Bad Name": "a"}}}},
		{Webhooks: []Webhook{{Name: "a", URL: "http://a/"}, {Name: "a", URL: "http://b/"}}},
		{Events: []string{"everything"}},
		{MinSeverity: "severe"},
		{QueueSize: -1},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	if Redact("https://hooks.slack.com/services/T/B/XYZ") != "https://hooks.slack.com/<redacted>" {
		t.Error(Redact("https://hooks.slack.com/services/T/B/XYZ"))
	}
}

// TestUpdateAddsAndRemovesWebhooks: Update starts a webhook it adds (while
// Run runs), stops one it removes (its queued events dropped and counted),
// and a kept one goes on with its counters.
func TestUpdateAddsAndRemovesWebhooks(t *testing.T) {
	got := make(chan string, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.URL.Path }))
	defer srv.Close()
	n, err := New(Config{Webhooks: []Webhook{{Name: "a", URL: srv.URL + "/a"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start(t, n)
	n.Notify(blockEvent())
	if p := within(t, got, "delivery to a"); p != "/a" {
		t.Fatalf("delivered to %s", p)
	}
	if err := n.Update(Config{Webhooks: []Webhook{{Name: "a", URL: srv.URL + "/a"}, {Name: "b", URL: srv.URL + "/b"}}}); err != nil {
		t.Fatal(err)
	}
	n.Notify(blockEvent())
	seen := map[string]bool{within(t, got, "delivery"): true, within(t, got, "delivery"): true}
	if !seen["/a"] || !seen["/b"] {
		t.Fatalf("after adding b: %v", seen)
	}
	if err := n.Update(Config{Webhooks: []Webhook{{Name: "b", URL: srv.URL + "/b2"}}}); err != nil {
		t.Fatal(err)
	}
	n.Notify(blockEvent())
	if p := within(t, got, "delivery to b"); p != "/b2" {
		t.Fatalf("after the update: delivered to %s, want /b2", p)
	}
	st := n.Stats()
	if len(st) != 1 || st[0].Name != "b" {
		t.Fatalf("stats after removing a: %+v", st)
	}
	if err := n.Update(Config{Webhooks: []Webhook{{URL: "ftp://x"}}}); err == nil || len(n.Stats()) != 1 {
		t.Fatalf("an invalid config was taken: %v", err)
	}
}

package caddymodule

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// backendProxy is Caddy's own reverse proxy provisioned for one backend. One
// proxy per backend lets http and https backends mix and keeps the upstream
// fixed: which backend a request goes to is decided (and its slot taken) before
// the proxy runs, so the proxy does no load balancing or retrying of its own.
type backendProxy struct {
	rp        *reverseproxy.Handler
	transport *reverseproxy.HTTPTransport
}

func newBackendProxy(ctx caddy.Context, h *Handler, bc BackendConfig, apiKey string) (*backendProxy, error) {
	u, err := url.Parse(bc.URL)
	if err != nil {
		return nil, err
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	// StreamIdleTimeout is not the transport's ReadTimeout: that deadline is
	// set when a read starts, and a pooled connection's pending read started
	// when it went idle, so a request on a reused connection would get less
	// than the timeout, and the response-header wait would be capped by it
	// too. The attempt writer applies it instead, once the response started.
	// The response header timeouts are not the transport's either: they
	// differ for streaming and non-streaming requests, and the attempt that
	// applies them records why it cut the request short.
	t := &reverseproxy.HTTPTransport{
		DialTimeout: h.DialTimeout,
	}
	if u.Scheme == "https" {
		t.TLS = &reverseproxy.TLSConfig{ServerName: u.Hostname()}
	}
	if err := t.Provision(ctx); err != nil {
		return nil, fmt.Errorf("provisioning transport: %w", err)
	}

	// The upstream sees its own host name (required by TLS virtual hosts and
	// most hosted APIs), and never the client's credentials for the gateway.
	// The body it gets is the one the router read, decoded and with a
	// Content-Length (setBody): the client's Content-Encoding and Expect no
	// longer apply. (Transfer-Encoding, Trailer and the other hop-by-hop
	// fields, Proxy-Authorization among them, the proxy drops itself.)
	reqOps := &headers.HeaderOps{
		Set:    http.Header{"Host": []string{u.Host}},
		Delete: []string{"Proxy-Authorization", capabilityHeader, "Content-Encoding", "Expect"},
	}
	if apiKey != "" {
		// Set, not Delete too: Caddy applies deletions after Set.
		reqOps.Set.Set("Authorization", "Bearer "+apiKey)
	} else {
		reqOps.Delete = append(reqOps.Delete, "Authorization")
	}
	rp := &reverseproxy.Handler{
		Transport: t,
		Upstreams: reverseproxy.UpstreamPool{{Dial: net.JoinHostPort(u.Hostname(), port)}},
		Headers:   &headers.Handler{Request: reqOps},
		// The response header is ours, added on the way out; drop an upstream's
		// own copy so clients cannot be misled about who answered.
	}
	if prefix := strings.TrimRight(u.Path, "/"); prefix != "" {
		rp.Rewrite = &rewrite.Rewrite{URI: prefix + "{http.request.uri}"}
	}
	if err := rp.Provision(ctx); err != nil {
		_ = t.Cleanup()
		return nil, fmt.Errorf("provisioning reverse proxy: %w", err)
	}
	return &backendProxy{rp: rp, transport: t}, nil
}

func (p *backendProxy) cleanup() {
	_ = p.rp.Cleanup()
	_ = p.transport.Cleanup()
}

// noNext ends the handler chain after the inner proxy; it is never reached
// for a proxied request but the proxy's signature wants one.
var noNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

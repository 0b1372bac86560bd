package sim

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("model_router_sim", parseCaddyfile)
	// A sim answers every request itself, like respond, so it sits where
	// respond does and a Caddyfile needs no order line for it.
	httpcaddyfile.RegisterDirectiveOrder("model_router_sim", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(Handler)
	err := s.UnmarshalCaddyfile(h.Dispenser)
	return s, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	model_router_sim [<matcher>] {
//	    name        <name>      # reported in responses and stats; default "sim"
//	    slots       <n>         # requests served concurrently; more wait in a FIFO queue (default 4)
//	    ttft        <duration>  # time to first token; 0 for none (default 20ms)
//	    per_token   <duration>  # time per further generated token; 0 for none (default 2ms)
//	    prefill_per_token <duration>  # extra time to first token per prompt token (default 0)
//	    tokens      <n>         # completion tokens; a request's max_tokens may lower it (default 16)
//	    max_queue   <n>         # requests that may wait for a slot; beyond → 503; 0 for no queue (default 1000)
//	    fail_status <status>    # optional: answer every /v1/ request with this status, 400-599 (fault injection)
//	}
//
// The block is optional; every setting may appear once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "name":
			h.Name = val
		case "slots", "tokens":
			// 0 would mean "the default" in JSON; here it is a mistake.
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return d.Errf("%s must be a whole number of at least 1, got %q", opt, val)
			}
			if opt == "slots" {
				h.Slots = n
			} else {
				h.Tokens = n
			}
		case "max_queue":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return d.Errf("max_queue must be a whole number of at least 0, got %q", val)
			}
			h.MaxQueue = &n
		case "fail_status":
			n, err := strconv.Atoi(val)
			if err != nil || n < 400 || n > 599 {
				return d.Errf("fail_status must be a status code between 400 and 599, got %q", val)
			}
			h.FailStatus = n
		case "ttft", "per_token", "prefill_per_token":
			dur, err := caddy.ParseDuration(val)
			if err != nil {
				return d.Errf("%s: bad duration %q: %v", opt, val, err)
			}
			if dur < 0 {
				return d.Errf("%s must not be negative, got %s", opt, val)
			}
			cd := caddy.Duration(dur)
			switch opt {
			case "ttft":
				h.TTFT = &cd
			case "per_token":
				h.PerToken = &cd
			default:
				h.PrefillPerToken = &cd
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)

# Minimal OTLP/HTTP sink for the benchmark: accepts every POST, counts bytes, answers 200.
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    n = 0
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        H.n += len(body)
        self.send_response(200); self.send_header('Content-Type', 'application/x-protobuf'); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a):
        sys.stderr.write("%s %s bytes_total=%d\n" % (self.path, self.headers.get('Content-Length'), H.n))
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()

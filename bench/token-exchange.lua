-- wrk script: every request is POST /token with the same RFC 8693 token
-- exchange form. run.sh writes the form (with a fresh session token) to a
-- file and passes its path in TOKEN_EXCHANGE_BODY.

local path = os.getenv("TOKEN_EXCHANGE_BODY")
if path == nil or path == "" then
  error("TOKEN_EXCHANGE_BODY is not set: set it to the path of a urlencoded token exchange form")
end

local file = io.open(path, "rb")
if file == nil then
  error("cannot open TOKEN_EXCHANGE_BODY file " .. path)
end
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

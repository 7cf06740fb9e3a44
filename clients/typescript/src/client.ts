// A small typed client of the Sonicus API. Its types come from the served OpenAPI document
// (`npm run generate` writes src/api.d.ts with openapi-typescript); the suite regenerates
// them and checks this file with `tsc --strict`, so a change of the API that breaks the SPA
// breaks the build first. Operations are named by their operationId.
import type { components, operations } from "./api";

export type Schemas = components["schemas"];
export type ErrorEnvelope = Schemas["ErrorEnvelope"];
export type ErrorCode = ErrorEnvelope["code"];
export type Pagination = Schemas["Pagination"];
export type Profile = Schemas["Profile"];
export type Package = Schemas["Package"];
export type PackageDetail = Schemas["PackageDetail"];
export type Session = Schemas["Session"];
export type Subscription = Schemas["Subscription"];
export type Tier = Schemas["Tier"]["name"];

type JsonBody<R> = R extends { content: { "application/json": infer B } } ? B : never;
type Success<Op> = Op extends { responses: infer Rs }
  ? { [K in keyof Rs]: K extends 200 | 201 | 202 ? JsonBody<Rs[K]> : never }[keyof Rs]
  : never;
type RequestBody<Op> = Op extends {
  requestBody?: { content: { "application/json": infer B } };
}
  ? B
  : never;
type Query<Op> = Op extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;

/** The answer's `data`, unwrapped from the envelope. */
export type Data<Id extends keyof operations> = Success<operations[Id]> extends { data: infer D }
  ? D
  : never;
/** One page of a list: its items and the envelope's `pagination`. */
export interface Page<T> {
  items: T[];
  pagination: Pagination;
}

/** An error answer: the HTTP status and the error envelope (`code`, `errors`, extras). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorEnvelope,
  ) {
    super(body.message);
  }
}

export interface ClientOptions {
  baseUrl: string;
  /** The current access token (the OIDC provider's JWT). */
  token: () => string | Promise<string>;
  fetch?: typeof fetch;
}

export class SonicusClient {
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: ClientOptions) {
    this.fetchImpl = options.fetch ?? fetch.bind(globalThis);
  }

  private async send<Id extends keyof operations>(
    method: string,
    path: string,
    init: { body?: unknown; query?: Record<string, string | number | boolean | undefined> } = {},
  ): Promise<Success<operations[Id]>> {
    const url = new URL(path, this.options.baseUrl);
    for (const [key, value] of Object.entries(init.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    const headers: Record<string, string> = {
      Authorization: `Bearer ${await this.options.token()}`,
    };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await this.fetchImpl(url, {
      method,
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const body: unknown = await res.json();
    if (!res.ok) throw new ApiError(res.status, body as ErrorEnvelope);
    return body as Success<operations[Id]>;
  }

  async getProfile(): Promise<Data<"getProfile">> {
    return (await this.send<"getProfile">("GET", "/api/user/profile")).data;
  }

  async updateProfile(changes: RequestBody<operations["updateProfile"]>): Promise<Profile> {
    return (await this.send<"updateProfile">("PUT", "/api/user/profile", { body: changes })).data;
  }

  async listPackages(query: Query<operations["listPackages"]> = {}): Promise<Page<Package>> {
    const answer = await this.send<"listPackages">("GET", "/api/packages", { query });
    return { items: answer.data, pagination: answer.pagination };
  }

  async getPackage(packageId: number): Promise<PackageDetail> {
    return (await this.send<"getPackage">("GET", `/api/packages/${packageId}`)).data;
  }

  async startSession(body: RequestBody<operations["startSession"]>): Promise<Session> {
    return (await this.send<"startSession">("POST", "/api/user/sessions", { body })).data;
  }

  async completeSession(
    sessionId: number,
    body: RequestBody<operations["completeSession"]>,
  ): Promise<Session> {
    const path = `/api/user/sessions/${sessionId}/complete`;
    return (await this.send<"completeSession">("POST", path, { body })).data;
  }

  async listSessions(query: Query<operations["listSessions"]> = {}): Promise<Page<Session>> {
    const answer = await this.send<"listSessions">("GET", "/api/user/sessions", { query });
    return { items: answer.data, pagination: answer.pagination };
  }

  async getSubscription(): Promise<Subscription> {
    return (await this.send<"getSubscription">("GET", "/api/user/subscription")).data;
  }

  /** Choose a tier; for a paid tier without a trial the answer carries the `checkout`. */
  async changeSubscription(
    body: RequestBody<operations["changeSubscription"]>,
  ): Promise<Subscription> {
    return (await this.send<"changeSubscription">("POST", "/api/user/subscription", { body }))
      .data;
  }
}

/** Where to send the browser to pay for a tier (null: nothing to pay, e.g. starter). */
export async function checkoutUrl(client: SonicusClient, tier: Tier): Promise<string | null> {
  const subscription = await client.changeSubscription({ tier, start_trial: false });
  return subscription.checkout?.url ?? null;
}

/** Start a session of a package and complete it: what the player does. */
export async function listen(
  client: SonicusClient,
  packageId: number,
  listenedSeconds: number,
): Promise<Session | { limitResetsAt: string }> {
  try {
    const session = await client.startSession({ package_id: packageId, mood_before: 4 });
    const seconds = Math.min(listenedSeconds, session.max_duration_seconds ?? listenedSeconds);
    return await client.completeSession(session.id, {
      listened_seconds: seconds,
      completed: true,
      mood_after: 7,
    });
  } catch (error) {
    if (error instanceof ApiError && error.body.code === "daily_session_limit_reached") {
      return { limitResetsAt: error.body.resets_at ?? "" };
    }
    throw error;
  }
}

/** Every page of the catalog that the caller's tier opens. */
export async function playablePackages(client: SonicusClient): Promise<Package[]> {
  const all: Package[] = [];
  for (let page = 1; ; page += 1) {
    const { items, pagination } = await client.listPackages({ page, per_page: 100, accessible: true });
    all.push(...items.filter((p) => !p.locked && p.access !== "locked"));
    if (pagination.page >= pagination.pages) return all;
  }
}

// ---- what the generated types must say (checked by tsc, never run) -----------------------

type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Expect<T extends true> = T;
type IsLiteralUnion<T> = string extends T ? false : true;

export type TypeChecks = [
  // pagination is the envelope's object on a page, null elsewhere: never `{}` or unknown
  Expect<Equals<Success<operations["listPackages"]>["pagination"], Pagination>>,
  Expect<Equals<Pagination, { page: number; per_page: number; total: number; pages: number }>>,
  Expect<Equals<Success<operations["getProfile"]>["pagination"], null>>,
  // error extras are typed; `code` is the registry's union, not any string
  Expect<Equals<ErrorEnvelope["resets_at"], string | undefined>>,
  Expect<Equals<ErrorEnvelope["required_tier"], string | undefined>>,
  Expect<Equals<ErrorEnvelope["portal_url"], string | undefined>>,
  Expect<Equals<ErrorEnvelope["data"], null>>,
  Expect<Equals<ErrorEnvelope["errors"], string[]>>,
  Expect<IsLiteralUnion<ErrorCode>>,
  Expect<Equals<"daily_session_limit_reached" extends ErrorCode ? true : false, true>>,
  // enums come out as unions
  Expect<Equals<Tier, "starter" | "premium" | "pro">>,
  Expect<IsLiteralUnion<Subscription["status"]>>,
  Expect<IsLiteralUnion<Session["status"]>>,
  Expect<IsLiteralUnion<Schemas["SubscriptionEvent"]["type"]>>,
  // a nullable nested object is "the schema or null", not `{} | null | schema`
  Expect<Equals<Subscription["checkout"], Schemas["Checkout"] | null | undefined>>,
  Expect<Equals<Session["track"], Schemas["SessionTrack"] | null>>,
];

// What the API does not have must not type-check (each line would otherwise be an error:
// "Unused '@ts-expect-error' directive").
export const refused = {
  // @ts-expect-error: pagination is {page, per_page, total, pages}
  totalPages: (p: Pagination): number => p.total_pages,
  // @ts-expect-error: no such tier
  tier: ((t: Tier) => t)("platinum"),
  // @ts-expect-error: no such error code
  code: ((c: ErrorCode) => c)("quota_exceeded"),
  // @ts-expect-error: the profile answer is not paginated
  profilePage: (a: Success<operations["getProfile"]>): number => a.pagination.total,
};

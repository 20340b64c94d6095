// The components of the pacskit workstation, for host applications that mount them one at a time.
// Each takes its data source (an ApiClient on the server's base URL) as a parameter. See
// docs/web-components.md.
export { ApiClient, ApiError, queryString } from "./api/http";
export { SessionApi, type Session, type Role } from "./api/session";
export { StudiesApi, type StudyQuery, type StudyPage, type RemoteNode, emptyQuery, studyParams, pageInfo } from "./api/studies";
export { JobsApi, type Job, jobsReducer, jobPercent } from "./api/jobs";
export { AdminApi } from "./api/admin";
export { LogsApi, type LogQuery, toCsv } from "./api/logs";
export { UsersApi } from "./api/users";
export { can } from "./roles";
export { mountLogin } from "./components/login";
export { mountSearchForm } from "./components/search-form";
export { mountStudyList } from "./components/study-list";
export { mountLoaderQueue } from "./components/loader-queue";
export { mountServerManager } from "./components/server-manager";
export { mountLogViewer } from "./components/log-viewer";
export { mountSettings } from "./components/settings";
export { schemaForm } from "./components/schema-form";
export { startApp } from "./app";
export type { Mounted } from "./dom";
